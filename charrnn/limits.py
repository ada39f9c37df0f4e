"""What a model or a checkpoint costs in memory, and the refusal when this machine lacks it.

Sizes come from the config alone (`parameter_count`, by formula for every kind), so a
config claiming `hidden_size` 10^6 is refused before anything is allocated. Memory
available is the least of: the kernel's MemAvailable, the cgroup's room (a container's
limit) and the room left under this process's address-space limits (`ulimit -v`).

No torch here: the NumPy sampling engine checks checkpoints with it too.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import resource
except ImportError:  # not a Unix: no address-space limits to read
    resource = None  # type: ignore[assignment]

from charrnn.config import FUSED_MODELS, ModelConfig
from charrnn.errors import CharRNNError

# Bytes per parameter while training with AdamW in fp32: weight, gradient, two moments.
TRAIN_BYTES_PER_PARAMETER = 16
# Recurrent blocks of H rows: gates of the fused kinds; (unit blocks, own-layer gate blocks) of GF.
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
_GF_BLOCKS = {"gf-rnn": (1, 0), "gf-gru": (3, 2), "gf-lstm": (4, 3)}
# Parameters of one layer of the kinds of charrnn.models.variants, by (input size I, hidden size H).
_VARIANT_LAYER = {
    "mlstm": lambda I, H: 5 * H * I + 4 * H + 5 * H * H,  # W_x and W_mx, gate bias, W_mh, W_m
    "mogrifier-lstm": lambda I, H: 5 * H * I + 4 * H * (I + H + 1),  # Q and R (5 rounds), the LSTM's
    "ln-lstm": lambda I, H: 4 * H * (I + H) + 3 * 4 * H + 2 * H,  # W, gains and bias of 4H, cell's norm
}


class TooLargeError(CharRNNError):
    """Refused for its size: more memory than is available, or more bytes than declared tensors
    need. Readers that otherwise pass a damaged file on to another reader raise this at once."""


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of charrnn.models.charrnn.CharRNN(cfg), from the config (tests compare every kind)."""
    V, E, H, L = cfg.vocab_size, cfg.embedding_size, cfg.hidden_size, cfg.num_layers
    total = V * E + V * H + V  # embedding, head weight and bias
    if cfg.model in FUSED_MODELS:
        G = _GATES[cfg.model] * H
        return total + G * (E + H + 2) + (L - 1) * G * (2 * H + 2)
    if cfg.model == "peephole-lstm":  # weight_ih, weight_hh, bias (4H rows), 3 peephole rows
        return total + 4 * H * (E + H + 1) + 3 * H + (L - 1) * (4 * H * (2 * H + 1) + 3 * H)
    if cfg.model in _VARIANT_LAYER:  # see charrnn.models.variants
        per_layer = _VARIANT_LAYER[cfg.model]
        return total + per_layer(E, H) + (L - 1) * per_layer(H, H)
    units, own = _GF_BLOCKS[cfg.model]  # see charrnn.models.custom.GatedFeedbackStack
    K = units * H + L
    total += K * E + (L - 1) * H * K + L * K + L * H * (own * H + L * H + L * L)
    return total + (L * H if cfg.model == "gf-gru" else 0)


def model_nbytes(cfg: ModelConfig) -> int:
    """Bytes of the model's fp32 weights."""
    return 4 * parameter_count(cfg)


def model_nbytes_for_training(cfg: ModelConfig) -> int:
    """Bytes training needs for the model itself: weights, gradients and AdamW's two moments
    (activations, which grow with the batch and sequence length, come on top)."""
    return TRAIN_BYTES_PER_PARAMETER * parameter_count(cfg)


def available_memory() -> int:
    """Bytes this process can still allocate, as far as the system says (never negative)."""
    room = [_mem_available()]
    room += [r for r in (_cgroup_room(), _rlimit_room()) if r is not None]
    return max(0, min(room))


def check_memory(nbytes: int, what: str, hint: str = "") -> None:
    """Raise TooLargeError when `what` (e.g. "the model 2x1000000 lstm") needs `nbytes` and
    this machine has less available; `hint` says what to do instead of the default."""
    free = available_memory()
    if nbytes > free:
        todo = hint or "use a smaller model (--hidden, --layers) or a machine with more memory."
        raise TooLargeError(
            f"{what} needs {format_bytes(nbytes)} of memory but {format_bytes(free)} is available: {todo}"
        )


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KB': units of 1000, as disks are sold."""
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} EB" if value < 1e6 else f"{value:.1e} EB"


def _mem_available() -> int:
    """MemAvailable from /proc/meminfo, else free physical pages (sysconf)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        name = "SC_AVPHYS_PAGES" if "SC_AVPHYS_PAGES" in os.sysconf_names else "SC_PHYS_PAGES"
        pages = os.sysconf(name)
        return int(pages) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2 or v1), or None without a limit."""
    v2, v1 = ("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes")
    places = [(Path("/sys/fs/cgroup"), v2), (Path("/sys/fs/cgroup/memory"), v1)]
    try:  # lines "0::/path" (v2) or "4:memory:/path" (v1): this process's own group first
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, group = line.split(":", 2)
            if controllers == "":
                places.insert(0, (Path("/sys/fs/cgroup" + group.rstrip("/")), v2))
            elif "memory" in controllers.split(","):
                places.insert(0, (Path("/sys/fs/cgroup/memory" + group.rstrip("/")), v1))
    except (OSError, ValueError):
        pass
    for folder, (limit_file, usage_file) in places:
        try:
            limit = (folder / limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 1 << 60:
                return None
            used = int((folder / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        # Usage counts the page cache; its inactive part is given back on demand (the "working
        # set" that container runtimes report is usage less inactive_file).
        try:
            stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
            used -= int(stat.get("inactive_file", stat.get("total_inactive_file", 0)))
        except (OSError, ValueError):
            pass
        return int(limit) - used
    return None


def _rlimit_room() -> int | None:
    """Room under RLIMIT_AS and RLIMIT_DATA (ulimit -v / -d): the limit minus what this
    process already maps (VmSize, VmData), or None when neither is set."""
    if resource is None:
        return None
    rooms = []
    for limit, field in ((resource.RLIMIT_AS, "VmSize:"), (resource.RLIMIT_DATA, "VmData:")):
        soft = resource.getrlimit(limit)[0]
        if soft == resource.RLIM_INFINITY:
            continue
        used = 0
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field):
                    used = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        rooms.append(soft - used)
    return min(rooms) if rooms else None


def int8_nonfinite_error(names: list[str]) -> CharRNNError:
    """The refusal to quantise weights holding NaN or infinity (`names`: the tensors)."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return CharRNNError(
        f"checkpoint has non-finite weights in {shown}: int8 cannot quantise them; resume from an earlier checkpoint."
    )
