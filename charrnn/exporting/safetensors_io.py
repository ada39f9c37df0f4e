"""The safetensors format, read and written with NumPy alone (no torch, no code execution).

A file is:

    8 bytes     N, the header's length, unsigned little-endian
    N bytes     JSON: {name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
                       "__metadata__": {str: str}}   (optional metadata, strings only)
    the rest    the tensors' raw bytes, little-endian, C order, offsets relative to here

charrnn writes one: the weights, with the model config and the vocabulary as JSON strings in
`__metadata__` (plus the run name and best validation loss when known). Files are untrusted
input: the header's size is bounded, every tensor's bytes lie inside the file, the tensors
tile the data area without gaps or overlaps, dtypes are known, and the total is checked
against the memory available before anything is read. Any fault is one CharRNNError.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.config import FORMAT_VERSION, ModelConfig, from_dict, printable
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.files import atomic_write
from charrnn.limits import check_memory

# The header holds the config and the vocabulary (at most 0x110000 symbols: ~4.5 MB as JSON).
MAX_HEADER = 16 << 20
# safetensors dtype name -> NumPy dtype (little-endian, as the format stores them)
DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def is_safetensors(path: Path) -> bool:
    return Path(path).suffix == ".safetensors"


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write `tensors` (in order) and `metadata` to `path` atomically."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    arrays, offset = [], 0
    for name, array in tensors.items():
        a = np.ascontiguousarray(array)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        if a.dtype not in NAMES:
            raise CharRNNError(f"cannot write tensor '{name}' of dtype {a.dtype} to safetensors.")
        header[name] = {"dtype": NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data area starts 8-byte aligned, as the format advises

    def write(f: Any) -> None:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for a in arrays:
            f.write(a.tobytes())

    atomic_write(Path(path), write)


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> array in file order, metadata) of a safetensors file. Raises CharRNNError."""
    path = Path(path)
    where = f"safetensors file '{path}'"
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CharRNNError(f"{where} is truncated: it has no header.")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER or 8 + n > size:
                raise CharRNNError(f"{where} is damaged: its header claims {n} bytes ({size} in the file).")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise CharRNNError(f"{where} is damaged: its header is not JSON.")
            if not isinstance(header, dict):
                raise CharRNNError(f"{where} is damaged: its header is not a table.")
            metadata = header.pop("__metadata__", None) or {}
            if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
                raise CharRNNError(f"{where} is damaged: __metadata__ must map strings to strings.")
            entries = _check_entries(header, size - 8 - n, where)
            check_memory(size - 8 - n, f"the tensors of {where}", "free some memory, or load it on a larger machine.")
            data = f.read(size - 8 - n)
    except OSError as exc:
        raise CharRNNError(f"cannot read {where}: {exc.strerror or exc}; check the file and its permissions.")
    if len(data) != size - 8 - n:
        raise CharRNNError(f"{where} is truncated.")
    arrays = {}
    for name, (dtype, shape, begin, end) in entries.items():
        a = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin).reshape(shape)
        arrays[name] = a.astype(a.dtype.newbyteorder("="), copy=True)  # native order, writeable
    return arrays, metadata


def _check_entries(header: dict, data_size: int, where: str) -> dict[str, tuple[np.dtype, tuple[int, ...], int, int]]:
    """Each tensor's (dtype, shape, begin, end), checked: known dtype, natural shape, bytes
    matching the shape, and the tensors tiling the data area exactly."""
    entries = {}
    for name, info in header.items():
        label = printable(str(name))[:60]
        ok = isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}
        shape, offsets = (info.get("shape"), info.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        if not ok:
            raise CharRNNError(f"{where} is damaged: tensor '{label}' has a malformed entry.")
        if info["dtype"] not in DTYPES:
            raise CharRNNError(
                f"{where} holds tensor '{label}' of unknown dtype {printable(str(info['dtype']))[:20]} "
                f"(known: {', '.join(DTYPES)})."
            )
        dtype = np.dtype(DTYPES[info["dtype"]])
        begin, end = offsets
        if not 0 <= begin <= end <= data_size or end - begin != int(np.prod(shape, dtype=object)) * dtype.itemsize:
            raise CharRNNError(f"{where} is damaged: tensor '{label}' lies outside the file or does not fit its shape.")
        entries[name] = (dtype, tuple(shape), begin, end)
    spans = sorted((b, e) for _, _, b, e in entries.values())
    cursor = 0
    for b, e in spans:
        if b != cursor:
            raise CharRNNError(f"{where} is damaged: its tensors overlap or leave gaps.")
        cursor = e
    if cursor != data_size:
        raise CharRNNError(f"{where} is damaged: it holds {data_size - cursor} bytes beyond its tensors.")
    return entries


# --------------------------------------------------------------------------------------
# A charrnn model as safetensors


def model_metadata(
    cfg: ModelConfig, vocab: Vocab, run: str | None, best_val: float | None, step: int | None = None
) -> dict[str, str]:
    meta = {
        "format": str(FORMAT_VERSION),
        "model_config": json.dumps(dataclasses.asdict(cfg)),
        "vocab": json.dumps(vocab.to_dict(), ensure_ascii=False),
    }
    if run:
        meta["run"] = run
    if best_val is not None:
        meta["best_val"] = repr(float(best_val))
    if step is not None:
        meta["step"] = str(int(step))
    return meta


def read_model(path: Path) -> tuple[ModelConfig, dict[str, np.ndarray], Vocab, dict[str, str]]:
    """(config, float32 weights, vocabulary, metadata) of a safetensors model written by charrnn.
    Raises CharRNNError; the weights' names and shapes are checked against the config by the
    engine that builds the network."""
    arrays, meta = read_safetensors(path)
    where = f"safetensors file '{path}'"
    if "model_config" not in meta or "vocab" not in meta:
        raise CharRNNError(
            f"{where} has no charrnn metadata (model_config, vocab): export it with `charrnn export RUN`."
        )
    try:
        version = int(meta.get("format", str(FORMAT_VERSION)))
        cfg = from_dict(ModelConfig, json.loads(meta["model_config"]), version)
        vocab = Vocab.from_dict(json.loads(meta["vocab"]))
    except ValueError:
        raise CharRNNError(f"{where} has damaged metadata: model_config and vocab must be JSON.")
    if len(vocab) != cfg.vocab_size:
        raise CharRNNError(f"{where} is damaged: its vocabulary has {len(vocab)} symbols, its config {cfg.vocab_size}.")
    bad = [name for name, a in arrays.items() if a.dtype != np.float32]
    if bad:
        raise CharRNNError(f"{where} holds tensor '{printable(bad[0])[:60]}' that is not float32.")
    return cfg, arrays, vocab, meta
