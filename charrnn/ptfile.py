"""A checkpoint file read without torch: its archive, what each part may cost, its fields.

`torch.save` writes a zip archive, its members stored uncompressed:

    archive/data.pkl       the payload, pickled; a tensor is a record (storage, offset,
                           shape, stride), a storage a key naming the member below
    archive/data/<key>     one storage's raw bytes, which a reader allocates and reads whole
    archive/byteorder, version, .format_version, ...   a few bytes each

Both readers open the file here first: charrnn.checkpoint before `torch.load`, and
charrnn.sample.numpy_engine instead of torch. `open_archive` unpickles data.pkl admitting tensors,
storages and plain containers only (as `torch.load(weights_only=True)` does; the
pure-Python unpickler, whose memo is a dict: the C one sizes its memo by the largest index
the file names), then gives every member a budget before any member is read:

- data/<key>: exactly the bytes its tensors reach (offset + extent over shape and stride,
  times the item size, over every tensor on it). charrnn's own files hold one storage per
  tensor, each exactly that size (model, optimizer moments, hidden state, RNG state);
- data.pkl: MAX_PICKLE bytes; any other member: MAX_OTHER bytes.

A member whose declared size (the zip directory's uncompressed size: what a reader
allocates, whatever its compression) exceeds its budget is refused, and so is a file whose
storages together need more memory than is available. `read_fields` then checks every
field of charrnn's format on these records, so neither reader meets a surprise. The file
stays whole: each budget and field check is only as strong as the others beside it.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import dataclass
from typing import IO, Any, ClassVar

from charrnn.config import FORMAT_VERSION, ModelConfig, TrainConfig, from_dict, printable
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.limits import TooLargeError, check_memory, format_bytes

# data.pkl holds configs, the vocabulary (at most 0x110000 symbols: 4.5 MB) and a few records.
MAX_PICKLE = 8 << 20
MAX_OTHER = 64 << 10
# torch storage class -> (numpy dtype name, bytes per element)
STORAGES = {
    "FloatStorage": ("float32", 4),
    "DoubleStorage": ("float64", 8),
    "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2),
    "LongStorage": ("int64", 8),
    "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2),
    "CharStorage": ("int8", 1),
    "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1),
}
TOP_KEYS = (
    "format",
    "model_config",
    "train_config",
    "vocab",
    "model",
    "optimizer",
    "progress",
    "hidden",
    "rng",
    "corpus",
)
# progress: integer counters, and numbers that must be finite and not negative.
_COUNTERS = ("step", "epoch", "cursor", "stale_evals", "skipped", "steps_per_epoch", "total_steps")
_SECONDS = ("elapsed", "spent", "lr_scale")
_CORPUS = {"path": str, "sha256": str, "encoding": str, "task": str, "chars": int}


@dataclass(frozen=True)
class Storage:
    key: str
    dtype: str  # numpy's name: float32, int64, ...
    itemsize: int
    numel: int  # elements, as the file declares


@dataclass(frozen=True)
class TensorRecord:
    """A tensor in the archive, read only when asked for (optimizer moments never are)."""

    storage: Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return self.storage.dtype

    def extent(self) -> int:
        """Elements of its storage the tensor reaches (0 when it is empty)."""
        if not all(self.shape):
            return 0
        return self.offset + 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))


class _Malformed(Exception):
    """A record or member that no torch.save writes."""


def _natural(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype, self.itemsize = STORAGES[name]


class _Unpickler(pickle._Unpickler):  # the pure-Python one: see the module docstring
    """Admits tensors, storages and plain containers; any other global is refused. Collects
    every storage and tensor record it meets, reachable from the payload or not."""

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[str, Storage] = {}
        self.records: list[TensorRecord] = []

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch" and name in STORAGES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return dict
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")

    def persistent_load(self, pid: Any) -> Storage:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and _natural(pid[4])
        ):
            raise pickle.UnpicklingError("unsupported storage record")
        storage = Storage(pid[2], pid[1].dtype, pid[1].itemsize, pid[4])
        if self.storages.setdefault(storage.key, storage) != storage:  # torch would keep the first
            raise _Malformed(f"storage {printable(storage.key)[:40]} is declared twice, differently")
        return storage

    def _rebuild_tensor(self, storage: Any, offset: Any, shape: Any, stride: Any, *_: Any) -> TensorRecord:
        if not (
            isinstance(storage, Storage)
            and _natural(offset)
            and isinstance(shape, tuple)
            and isinstance(stride, tuple)
            and len(shape) == len(stride) <= 64
            and all(map(_natural, shape))
            and all(map(_natural, stride))
        ):
            raise _Malformed("a tensor record is malformed")
        record = TensorRecord(storage, offset, shape, stride)
        if math.prod(shape) > max(record.extent(), 1):  # stride 0: a huge view of a few numbers
            raise _Malformed("a tensor has more elements than its storage")
        self.records.append(record)
        return record

    def load_build(self) -> None:
        """BUILD: torch.save sets attributes of an OrderedDict (a state_dict's _metadata),
        which a plain dict drops; anything else was never written by torch.save."""
        state = self.stack.pop()
        if type(self.stack[-1]) is not dict or not isinstance(state, (dict, tuple)):
            raise pickle.UnpicklingError("unsupported object state")

    dispatch[pickle.BUILD[0]] = load_build


class Archive:
    """An opened checkpoint: `payload` with TensorRecords for tensors, sizes checked."""

    def __init__(self, archive: zipfile.ZipFile, name: str) -> None:
        self.zip, self.name = archive, name
        names = archive.namelist()
        # torch reads <first entry's folder>/..., looking names up without regard to case.
        self.prefix = (names[0].split("/", 1)[0] if names else "") + "/"
        if self.prefix + "data.pkl" not in names or len({n.lower() for n in names}) != len(names):
            raise _Malformed("it is not a torch zip archive")
        self.sizes = {i.filename: i.file_size for i in archive.infolist()}
        pickled = self.sizes[self.prefix + "data.pkl"]
        if pickled > MAX_PICKLE:
            raise TooLargeError(
                f"refused '{name}': its data.pkl declares {format_bytes(pickled)}, more than a charrnn "
                "checkpoint holds; only load checkpoints written by charrnn."
            )
        with archive.open(self.prefix + "data.pkl") as f:
            unpickler = _Unpickler(f)
            self.payload = unpickler.load()
        self.records = unpickler.records
        self._check_sizes(unpickler.storages)
        order = archive.read(self.prefix + "byteorder") if self.prefix + "byteorder" in self.sizes else b"little"
        self.byteorder = order.decode("ascii", "replace")

    def _check_sizes(self, storages: dict[str, Storage]) -> None:
        """Every member within its budget (see the module docstring), the total within memory."""
        members = {f"{self.prefix}data/{s.key}": s for s in storages.values()}
        need = dict.fromkeys(members, 0)
        for record in self.records:
            member = f"{self.prefix}data/{record.storage.key}"
            need[member] = max(need[member], record.extent() * record.storage.itemsize)
        for member, size in self.sizes.items():
            allowed = need.get(member, MAX_PICKLE if member == self.prefix + "data.pkl" else MAX_OTHER)
            if size > allowed:
                raise TooLargeError(
                    f"refused '{self.name}': its member '{printable(member)[:80]}' declares "
                    f"{format_bytes(size)} where its tensors need {format_bytes(allowed)}; "
                    "only load checkpoints written by charrnn."
                )
        for member, storage in members.items():
            if self.sizes.get(member) != storage.numel * storage.itemsize or need[member] > self.sizes[member]:
                raise _Malformed(f"storage {printable(storage.key)[:40]} is missing or smaller than its tensors")
        check_memory(
            sum(need.values()),
            f"reading checkpoint '{self.name}'",
            "load it on a machine with more memory, or free some.",
        )

    def read(self, storage: Storage) -> bytes:
        """The raw bytes of `storage` (its size was checked when the archive was opened)."""
        return self.zip.read(f"{self.prefix}data/{storage.key}")


def open_archive(file: IO[bytes], name: str) -> Archive:
    """Parse and size-check the checkpoint in `file` (binary, seekable; kept open while the
    Archive is used); `name` is its path, for messages.

    Raises CharRNNError: TooLargeError for a member larger than its tensors need or a file
    larger than the memory available, a plain CharRNNError when it is not a file charrnn
    can read (truncated, damaged, or holding objects other than tensors and plain data)."""
    try:
        return Archive(zipfile.ZipFile(file), name)
    except CharRNNError:
        raise
    except pickle.UnpicklingError as exc:
        raise CharRNNError(
            f"refused to load '{name}': it holds objects other than tensors and plain data "
            f"({(str(exc).splitlines() or [''])[0][:120]}); only load checkpoints written by charrnn."
        )
    except _Malformed as exc:
        raise CharRNNError(f"cannot read checkpoint '{name}': {exc}; it is damaged or was not written by charrnn.")
    except MemoryError:
        raise TooLargeError(f"reading checkpoint '{name}' ran out of memory: it is damaged or hostile.")
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: zipfile, zlib and pickle raise many kinds
        raise CharRNNError(f"cannot read checkpoint '{name}': the file is truncated or corrupt ({type(exc).__name__}).")


@dataclass(frozen=True)
class Fields:
    """The plain fields of a checked payload; its tensors stay where they are."""

    version: int
    model_config: ModelConfig
    train_config: TrainConfig
    vocab: Vocab


def read_fields(payload: Any, name: str) -> Fields:
    """Check every field of a charrnn checkpoint's payload (as `Archive.payload` holds it:
    tensors as TensorRecords) and return its configs and vocabulary. Raises CharRNNError
    naming the first field that is missing, of the wrong type or out of range."""
    if not isinstance(payload, dict) or "format" not in payload:
        raise CharRNNError(f"'{name}' is not a charrnn checkpoint.")
    version = payload["format"]
    if not _natural(version) or version < 1:
        raise CharRNNError(
            f"checkpoint '{name}' has format {version!r:.20}, which charrnn never writes: it is damaged."
        )
    if version > FORMAT_VERSION:
        raise CharRNNError(
            f"checkpoint '{name}' has format {version}, newer than this charrnn reads "
            f"({FORMAT_VERSION}): upgrade charrnn."
        )
    where = f"checkpoint '{name}' (format {version})"
    unknown = [repr(k)[:30] for k in payload if k not in TOP_KEYS]
    if unknown:
        raise CharRNNError(
            f"{where} has unknown keys {', '.join(unknown[:5])}: it was written by another charrnn version."
        )
    for key in ("model_config", "train_config", "vocab", "model"):
        if key not in payload:
            raise CharRNNError(f"{where} lacks '{key}': it is damaged.")
    mcfg = from_dict(ModelConfig, payload["model_config"], version)
    tcfg = from_dict(TrainConfig, payload["train_config"], version)
    try:
        vocab = Vocab.from_dict(payload["vocab"])
    except CharRNNError as exc:
        raise CharRNNError(f"{where}: {exc}")
    if len(vocab) != mcfg.vocab_size:
        raise CharRNNError(
            f"checkpoint '{name}' is inconsistent: its vocabulary has {len(vocab)} symbols "
            f"but its model config says vocab_size={mcfg.vocab_size}."
        )
    _check_tensors(payload, mcfg, where)
    _check_plain(payload, where)
    return Fields(version, mcfg, tcfg, vocab)


def _require(ok: Any, where: str, field: str, wanted: str) -> None:
    if not ok:
        raise CharRNNError(f"{where} field {printable(field)[:60]} must be {wanted}: the file is damaged.")


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _tensor(value: Any, dtype: str, dims: int | None = None) -> bool:
    return isinstance(value, TensorRecord) and value.dtype == dtype and (dims is None or len(value.shape) == dims)


def _check_tensors(payload: dict, cfg: ModelConfig, where: str) -> None:
    """model: float32 tensors (build_model compares their shapes with the config); hidden: the
    carried state, `state_size` tensors (L, B, H); rng: byte tensors, per rank under "ranks"."""
    model = payload["model"]
    _require(_is_table(model) and model, where, "model", "a table of tensors")
    for key, record in model.items():
        _require(_tensor(record, "float32"), where, f"model.{key}", "a float32 tensor")
    hidden = payload.get("hidden")
    if hidden is not None:
        ok = (
            isinstance(hidden, (list, tuple))
            and len(hidden) == cfg.state_size
            and all(
                _tensor(h, "float32", 3) and (h.shape[0], h.shape[2]) == (cfg.num_layers, cfg.hidden_size)
                for h in hidden
            )
        )
        _require(
            ok and len({h.shape for h in hidden}) == 1,
            where,
            "hidden",
            f"{cfg.state_size} float32 tensors of shape ({cfg.num_layers}, B, {cfg.hidden_size})",
        )
    rng = payload.get("rng")
    _require(rng is None or _is_table(rng), where, "rng", "a table")
    ranks = (rng or {}).get("ranks", [])
    _require(isinstance(ranks, list) and all(map(_is_table, ranks)), where, "rng.ranks", "a list of tables")
    for table in (rng or {}, *ranks):
        for key, value in table.items():
            ok = (key == "ranks" and table is rng) or _tensor(value, "uint8", 1)
            _require(ok, where, f"rng.{key}", "a byte tensor")


def _check_plain(payload: dict, where: str) -> None:
    """progress: numbers (counters integers, durations finite); optimizer: torch's state dict
    layout; corpus: a table whose known keys have their types."""
    progress = payload.get("progress")
    _require(progress is None or _is_table(progress), where, "progress", "a table of numbers")
    for key, value in (progress or {}).items():
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), where, f"progress.{key}", "a number")
        if key in _COUNTERS:
            _require(_natural(value) and value < 2**62, where, f"progress.{key}", "an integer in [0, 2**62)")
        elif key in _SECONDS:
            _require(math.isfinite(value) and value >= 0, where, f"progress.{key}", "a finite number, 0 or more")
    opt = payload.get("optimizer")
    groups = opt.get("param_groups") if isinstance(opt, dict) else None
    ok = isinstance(groups, list) and all(map(_is_table, groups)) and isinstance(opt.get("state"), dict)
    _require(opt is None or ok, where, "optimizer", "an optimizer state (state, param_groups)")
    corpus = payload.get("corpus")
    _require(corpus is None or _is_table(corpus), where, "corpus", "a table")
    for key, kind in _CORPUS.items():
        if corpus and key in corpus:
            value = corpus[key]
            _require(
                isinstance(value, kind) and not isinstance(value, bool),
                where,
                f"corpus.{key}",
                "a string" if kind is str else "an integer",
            )
