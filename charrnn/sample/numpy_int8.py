"""int8 weights for the NumPy sampling engine: compiled kernels, no torch.

A one-stream sampling step reads every weight once per character, so its speed
follows the bytes it reads and the work done per byte. `Int8Dense` keeps a
weight matrix as int8 with one scale per output row (symmetric, as torch's
per-channel dynamic quantization does) and computes x @ W^T with a kernel that
numba compiles. The dot product takes one of three paths, the first of these
the CPU has, chosen once per process and named by `DOT_PATH`:

    vnni   AVX512-VNNI with AVX512VL, or AVX-VNNI: one `vpdpbusd` per 32 bytes
           (unsigned-by-signed byte products summed in fours into int32)
    avx2   `vpmaddubsw` (the products summed in pairs into int16) then `vpmaddwd`
           against ones (pairs of those into int32)
    plain  a loop that LLVM vectorizes as it can, for any CPU

All three give the same integers, so the same samples. The environment variable
CHARRNN_INT8_DOT=vnni|avx2|plain starts the choice at that path instead (tests
and benchmarks compare paths with it); a path the CPU lacks falls back down the
list. VNNI first: one instruction where AVX2 needs two, never slower where
measured (benchmarks/RESULTS.md, "int8 weights on the NumPy engine").

Activations are quantized per row of the input at each call: symmetric to
-63..63, then shifted by 64 into 1..127 so that they fit the unsigned operand
with no pair sum overflowing int16 (2 * 127 * 127 < 2^15); the shift is taken
back out with each weight row's sum. That is the 7-bit activation range
fbgemm's int8 kernel uses too; at one row it is faster than int16 activations
and than fbgemm (figures: benchmarks/RESULTS.md, "Sampling kernels").

`Int8Net` is the NumPy engine's network on these products, each layer one
compiled call (product, gates, new state): NumPy's gate arithmetic cost about as
much as the int8 products themselves.

`available()` says whether numba is importable; without it charrnn uses torch's
fbgemm int8 kernel (charrnn.sample.fast_step) instead. The file stays whole: the kernels
are compiled together and share their constants and scratch layout.
"""

from __future__ import annotations

import os

import numpy as np

from charrnn.config import ModelConfig
from charrnn.errors import CharRNNError
from charrnn.limits import int8_nonfinite_error
from charrnn.sample.numpy_net import GATES, NumpyNet, nonfinite_arrays

try:
    import numba
    from llvmlite import ir
    from numba.extending import intrinsic
except ImportError:  # charrnn then uses torch's int8 kernel
    numba = None

# Activations become integers in -LEVELS..LEVELS, stored shifted by OFFSET as 1..127.
LEVELS = 63
OFFSET = 64
# Rows are padded with zeros to a multiple of this: the SIMD loops take 4 x 32 bytes a turn.
_BLOCK = 128
# Weight bytes per block of rows that meets every stream in turn (half a 32 KB L1 cache).
_L1_BYTES = 16384


def available() -> bool:
    """True when the compiled kernel can be used (numba importable)."""
    return numba is not None


# The dot product's paths in the order they are tried (the fastest first; see the docstring).
DOT_PATHS = ("vnni", "avx2", "plain")
# Names the path of DOT_PATHS to try first instead of "vnni" (tests, benchmarks).
DOT_PATH_ENV = "CHARRNN_INT8_DOT"


def cpu_dot_paths() -> tuple[str, ...]:
    """The paths of DOT_PATHS this CPU can run, in DOT_PATHS's order ("plain" always): those
    its features allow, or those numba is told to compile for (NUMBA_CPU_FEATURES; none with
    NUMBA_CPU_NAME=generic), as LLVM cannot emit an instruction the target lacks."""
    listed = numba.config.CPU_FEATURES if numba is not None else None
    if listed is not None:  # "+avx2,-avx512vnni,..."
        has = {feature[1:]: feature[0] == "+" for feature in listed.split(",") if feature}
    else:
        try:
            from llvmlite import binding

            has = binding.get_host_cpu_features()
        except (ImportError, RuntimeError):  # no llvmlite, or a CPU it cannot describe
            has = {}
    vnni = (has.get("avx512vnni") and has.get("avx512vl")) or has.get("avxvnni")
    simd = ("vnni",) * bool(has.get("avx2") and vnni) + ("avx2",) * bool(has.get("avx2"))
    return (*simd, "plain")


def _choose_dot_path() -> str:
    """The first path of DOT_PATHS, starting at the one $CHARRNN_INT8_DOT names if set, that
    this CPU has."""
    wanted = os.environ.get(DOT_PATH_ENV, "").strip().lower() or DOT_PATHS[0]
    if wanted not in DOT_PATHS:
        raise CharRNNError(f"{DOT_PATH_ENV}={wanted!r} is not a dot product path; use one of {', '.join(DOT_PATHS)}.")
    have = cpu_dot_paths()
    return next(path for path in DOT_PATHS[DOT_PATHS.index(wanted) :] if path in have)


def _jit(fn, cache: bool = True):
    # cache: compiled code is kept beside this module (or in numba's per-user cache folder
    # when that is read-only), so only the first use on a machine pays the ~1 s compile.
    return numba.njit(cache=cache, fastmath=True, boundscheck=False, nogil=True)(fn)


def _dot_codegen(streams: int, lanes: int, vnni: bool):
    """Codegen of an intrinsic: sum(x_s[k] * q[k], k < n) for `streams` byte rows x_s (uint8,
    at most 127) starting at address args[0], args[1] bytes apart, against one int8 row q at
    args[2]; n = args[3] a multiple of 32 * lanes. Each 32-byte piece of q is loaded once for
    every stream; streams * lanes 256-bit accumulators hide the multiply latency. `vnni`:
    one vpdpbusd per piece, else vpmaddubsw + vpmaddwd (exact alike: no int16 pair sum can
    saturate, 2 * 127 * 127 < 2^15, and vpdpbusd does not saturate). Returns an int32, or a
    tuple of `streams` int32."""

    def codegen(context, builder, signature, args):
        x_addr, x_stride, q_addr, n = args
        intp, i32 = n.type, ir.IntType(32)
        v_bytes, v_i16, v_i32 = (
            ir.VectorType(ir.IntType(8), 32),
            ir.VectorType(ir.IntType(16), 16),
            ir.VectorType(i32, 8),
        )
        module = builder.module

        def declare(name: str, result: ir.Type, *params: ir.Type) -> ir.Function:
            return module.globals.get(name) or ir.Function(module, ir.FunctionType(result, params), name)

        maddubs = declare("llvm.x86.avx2.pmadd.ub.sw", v_i16, v_bytes, v_bytes)
        maddwd = declare("llvm.x86.avx2.pmadd.wd", v_i32, v_i16, v_i16)
        # acc + four byte products per int32 lane; LLVM encodes it as AVX-VNNI where that is
        # the CPU's form.
        dpbusd = declare("llvm.x86.avx512.vpdpbusd.256", v_i32, v_i32, v_i32, v_i32)
        reduce = declare("llvm.vector.reduce.add.v8i32", i32, v_i32)
        ones = ir.Constant(v_i16, [1] * 16)
        x_vecs = [
            builder.inttoptr(builder.add(x_addr, builder.mul(x_stride, ir.Constant(intp, s))), v_bytes.as_pointer())
            for s in range(streams)
        ]
        q_vec = builder.inttoptr(q_addr, v_bytes.as_pointer())
        turns = builder.udiv(n, ir.Constant(intp, 32 * lanes))
        entry = builder.block
        loop = builder.append_basic_block("dot.loop")
        done = builder.append_basic_block("dot.done")
        builder.cbranch(builder.icmp_unsigned("!=", turns, ir.Constant(intp, 0)), loop, done)

        builder.position_at_end(loop)
        turn = builder.phi(intp)
        accs = [[builder.phi(v_i32) for _ in range(lanes)] for _ in range(streams)]
        sums = [[None] * lanes for _ in range(streams)]
        for lane in range(lanes):
            at = builder.add(builder.mul(turn, ir.Constant(intp, lanes)), ir.Constant(intp, lane))
            q32 = builder.load(builder.gep(q_vec, [at]), align=1)
            q_words = builder.bitcast(q32, v_i32)
            for s in range(streams):
                x32 = builder.load(builder.gep(x_vecs[s], [at]), align=1)
                if vnni:
                    sums[s][lane] = builder.call(dpbusd, [accs[s][lane], builder.bitcast(x32, v_i32), q_words])
                else:
                    pairs = builder.call(maddubs, [x32, q32])  # 16 x int16: x0 q0 + x1 q1, ...
                    sums[s][lane] = builder.add(accs[s][lane], builder.call(maddwd, [pairs, ones]))
        next_turn = builder.add(turn, ir.Constant(intp, 1))
        turn.add_incoming(ir.Constant(intp, 0), entry)
        turn.add_incoming(next_turn, loop)
        for s in range(streams):
            for acc, total in zip(accs[s], sums[s]):
                acc.add_incoming(ir.Constant(v_i32, None), entry)
                acc.add_incoming(total, loop)
        builder.cbranch(builder.icmp_unsigned("<", next_turn, turns), loop, done)

        builder.position_at_end(done)
        finals = []
        for s in range(streams):  # every phi first, then the arithmetic
            for total in sums[s]:
                final = builder.phi(v_i32)
                final.add_incoming(ir.Constant(v_i32, None), entry)
                final.add_incoming(total, loop)
                finals.append(final)
        results = []
        for s in range(streams):
            total = finals[s * lanes]
            for final in finals[s * lanes + 1 : (s + 1) * lanes]:
                total = builder.add(total, final)
            results.append(builder.call(reduce, [total]))
        return results[0] if streams == 1 else context.make_tuple(builder, signature.return_type, results)

    return codegen


def _dot_rows_plain(xu, b, q, start, stop, acc):  # pragma: no cover - compiled by numba
    """acc[0, r] = sum(xu[b, k] * q[r, k]) for start <= r < stop, for CPUs without AVX2 (the
    same integers as the SIMD loops, computed slower)."""
    for r in range(start, stop):
        total = np.int32(0)
        for k in range(q.shape[1]):
            total += np.int32(xu[b, k]) * np.int32(q[r, k])
        acc[0, r] = total


def _dot_rows_avx2(xu, b, q, start, stop, acc):  # pragma: no cover - compiled by numba
    """As _dot_rows_plain, through the AVX2 intrinsic (rows a multiple of _BLOCK long)."""
    k_len = q.shape[1]
    x_addr = xu.ctypes.data + b * xu.shape[1]
    q_addr = q.ctypes.data
    for r in range(start, stop):
        acc[0, r] = _dot1_avx2(x_addr, 0, q_addr + r * k_len, k_len)


def _dot_rows4_avx2(xu, b, q, start, stop, acc):  # pragma: no cover - compiled by numba
    """acc[s, r] for the four streams b..b+3: each piece of a weight row is loaded once."""
    k_len = q.shape[1]
    x_addr = xu.ctypes.data + b * xu.shape[1]
    q_addr = q.ctypes.data
    for r in range(start, stop):
        acc[0, r], acc[1, r], acc[2, r], acc[3, r] = _dot4_avx2(x_addr, xu.shape[1], q_addr + r * k_len, k_len)


def _dot_rows_vnni(xu, b, q, start, stop, acc):  # pragma: no cover - compiled by numba
    """As _dot_rows_avx2, through the VNNI intrinsic."""
    k_len = q.shape[1]
    x_addr = xu.ctypes.data + b * xu.shape[1]
    q_addr = q.ctypes.data
    for r in range(start, stop):
        acc[0, r] = _dot1_vnni(x_addr, 0, q_addr + r * k_len, k_len)


def _dot_rows4_vnni(xu, b, q, start, stop, acc):  # pragma: no cover - compiled by numba
    """As _dot_rows4_avx2, through the VNNI intrinsic."""
    k_len = q.shape[1]
    x_addr = xu.ctypes.data + b * xu.shape[1]
    q_addr = q.ctypes.data
    for r in range(start, stop):
        acc[0, r], acc[1, r], acc[2, r], acc[3, r] = _dot4_vnni(x_addr, xu.shape[1], q_addr + r * k_len, k_len)


def _dot_rows4_plain(xu, b, q, start, stop, acc):  # pragma: no cover - compiled by numba
    for s in range(4):
        _dot_rows_plain(xu, b + s, q, start, stop, acc[s:])


def _qproduct(q, rowsum, scale, x1, x2, xu, acc, out):  # pragma: no cover - compiled by numba
    """out (B, N) = [x1, x2] (B, K1 + K2) @ (q * scale[:, None])^T, each row of the
    concatenation quantized to 7 bits (x1 may be a (0, 0) array: no columns).

    q (N, Kp) int8 with Kp >= K1 + K2 (zero columns past them), rowsum (N,) its row sums
    as int32, scale (N,) float32; xu (B', Kp) uint8 and acc (4, N) int32 are scratch, B' >=
    B. The streams are quantized first; then each block of weight rows meets every stream
    while it is in the L1 cache, four streams at a time where there are four (each piece of
    a row loaded once for the four: faster than the one-by-one loop at many streams, see
    benchmarks/RESULTS.md, "Sampling kernels").
    """
    n_streams, k2 = x2.shape
    k1 = x1.shape[1]
    n_rows = q.shape[0]
    steps = np.empty(n_streams, np.float32)
    for b in range(n_streams):
        amax = np.float32(0.0)
        for k in range(k1):
            amax = max(amax, abs(x1[b, k]))
        for k in range(k2):
            amax = max(amax, abs(x2[b, k]))
        inv = np.float32(LEVELS) / amax if amax > 0 else np.float32(0.0)
        for k in range(k1):
            xu[b, k] = np.uint8(np.int32(np.rint(x1[b, k] * inv)) + OFFSET)
        for k in range(k2):
            xu[b, k1 + k] = np.uint8(np.int32(np.rint(x2[b, k] * inv)) + OFFSET)
        steps[b] = amax / np.float32(LEVELS)
    block = max(1, _L1_BYTES // q.shape[1])
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        b = 0
        while b < n_streams:
            group = 4 if b + 4 <= n_streams else 1
            if group == 4:
                _dot_rows4(xu, b, q, start, stop, acc)
            else:
                _dot_rows(xu, b, q, start, stop, acc)
            for s in range(group):
                for r in range(start, stop):
                    out[b + s, r] = np.float32(acc[s, r] - OFFSET * rowsum[r]) * (steps[b + s] * scale[r])
            b += group


# tanh(v) ~ v P(v^2) / Q(v^2) on |v| <= 9 (tanh(9) = 1 - 3e-8), coefficients fitted for this
# module by iteratively reweighted least squares: largest error 5.5e-6 over all float32
# inputs, far below the 1/63 steps of the quantized activations. NumPy's tanh and numba's libm
# call are scalar; this vectorizes (timings: benchmarks/RESULTS.md, "Sampling kernels").
_P = tuple(
    np.float32(c) for c in (0.9999764561653137, 0.12024945765733719, 0.002044495427981019, 2.9559741960838437e-06)
)
_Q = tuple(np.float32(c) for c in (0.45351243019104004, 0.019944852218031883, 0.00011841669038403779))
_CLAMP, _HALF, _ONE = np.float32(9.0), np.float32(0.5), np.float32(1.0)


def _tanh(v):  # pragma: no cover - compiled by numba
    v = min(max(v, -_CLAMP), _CLAMP)
    t = v * v
    p = ((_P[3] * t + _P[2]) * t + _P[1]) * t + _P[0]
    q = ((_Q[2] * t + _Q[1]) * t + _Q[0]) * t + _ONE
    return v * p / q


def _sigmoid(v):  # pragma: no cover - compiled by numba
    return _HALF + _HALF * _tanh(_HALF * v)


def _lstm_layer(q, rowsum, scale, x, h, base, ids, c, xu, acc, pre, h_out, c_out):  # pragma: no cover
    """One LSTM layer for B streams: pre = [x, h] @ W^T + base[ids], gate rows i, f, o, g."""
    _qproduct(q, rowsum, scale, x, h, xu, acc, pre)
    hidden = h.shape[1]
    for b in range(h.shape[0]):
        row = ids[b]
        for j in range(hidden):
            i = _sigmoid(pre[b, j] + base[row, j])
            f = _sigmoid(pre[b, hidden + j] + base[row, hidden + j])
            o = _sigmoid(pre[b, 2 * hidden + j] + base[row, 2 * hidden + j])
            g = _tanh(pre[b, 3 * hidden + j] + base[row, 3 * hidden + j])
            cell = f * c[b, j] + i * g
            c_out[b, j] = cell
            h_out[b, j] = o * _tanh(cell)


def _rnn_layer(q, rowsum, scale, x, h, base, ids, xu, acc, pre, h_out):  # pragma: no cover
    """One tanh RNN layer for B streams: h' = tanh([x, h] @ W^T + base[ids])."""
    _qproduct(q, rowsum, scale, x, h, xu, acc, pre)
    for b in range(h.shape[0]):
        row = ids[b]
        for j in range(h.shape[1]):
            h_out[b, j] = _tanh(pre[b, j] + base[row, j])


def _gru_layer(
    qi, rowsum_i, scale_i, x, base_i, ids, qh, rowsum_h, scale_h, h, bias_h, xu, acc, gi, gh, h_out
):  # pragma: no cover - compiled by numba
    """One GRU layer for B streams (gate rows r, z, n): gi = x @ W_ih^T + base_i[ids] (no
    product when x has no columns: the first layer's table holds it), gh = h @ W_hh^T + b_hh."""
    n_streams, hidden = h.shape
    if x.shape[1] > 0:
        _qproduct(qi, rowsum_i, scale_i, x[:0, :0], x, xu, acc, gi)
    else:
        gi[:, :] = 0.0
    _qproduct(qh, rowsum_h, scale_h, x[:0, :0], h, xu, acc, gh)
    for b in range(n_streams):
        row = ids[b]
        for j in range(hidden):
            r = _sigmoid(gi[b, j] + base_i[row, j] + gh[b, j] + bias_h[j])
            z = _sigmoid(gi[b, hidden + j] + base_i[row, hidden + j] + gh[b, hidden + j] + bias_h[hidden + j])
            n = _tanh(
                gi[b, 2 * hidden + j]
                + base_i[row, 2 * hidden + j]
                + r * (gh[b, 2 * hidden + j] + bias_h[2 * hidden + j])
            )
            h_out[b, j] = n + z * (h[b, j] - n)


def _dot_intrinsic(streams: int, lanes: int, vnni: bool):
    """The numba intrinsic of _dot_codegen: (x address, stride, q address, n) -> int32(s)."""
    addrs = (numba.types.intp,) * 4
    result = numba.types.int32 if streams == 1 else numba.types.UniTuple(numba.types.int32, streams)
    return intrinsic(lambda typingctx, x, stride, q, n: (result(*addrs), _dot_codegen(streams, lanes, vnni)))


DOT_PATH = "plain"  # the path this process's kernels use; set below, once
if numba is not None:
    DOT_PATH = _choose_dot_path()
    # Every path's row loops are defined (numba compiles each on its first call, and only the
    # CPU's paths can be called: LLVM cannot emit an instruction the CPU lacks), so tests can
    # compare them; the layers below call DOT_PATH's.
    _dot_rows_plain = _jit(_dot_rows_plain)
    _dot_rows4_plain = _jit(_dot_rows4_plain)
    _dot1_avx2, _dot4_avx2 = _dot_intrinsic(1, 4, False), _dot_intrinsic(4, 2, False)
    _dot_rows_avx2 = _jit(_dot_rows_avx2)
    _dot_rows4_avx2 = _jit(_dot_rows4_avx2)
    _dot1_vnni, _dot4_vnni = _dot_intrinsic(1, 4, True), _dot_intrinsic(4, 2, True)
    _dot_rows_vnni = _jit(_dot_rows_vnni)
    _dot_rows4_vnni = _jit(_dot_rows4_vnni)
    _dot_rows, _dot_rows4 = {
        "vnni": (_dot_rows_vnni, _dot_rows4_vnni),
        "avx2": (_dot_rows_avx2, _dot_rows4_avx2),
        "plain": (_dot_rows_plain, _dot_rows4_plain),
    }[DOT_PATH]
    # numba's cache keys a function on its code and the CPU, not on the row loop it calls:
    # code compiled for a path other than the CPU's default is not cached, so that neither
    # this process nor a later one loads the other path's code.
    _cache = DOT_PATH == cpu_dot_paths()[0]
    _qproduct = _jit(_qproduct, _cache)
    _tanh = _jit(_tanh)
    _sigmoid = _jit(_sigmoid)
    _lstm_layer = _jit(_lstm_layer, _cache)
    _rnn_layer = _jit(_rnn_layer, _cache)
    _gru_layer = _jit(_gru_layer, _cache)


class Int8Dense:
    """x @ W^T with W (N, K) held as int8 plus one float32 scale per row."""

    def __init__(self, weight: np.ndarray) -> None:
        weight = np.asarray(weight, dtype=np.float32)
        if not np.isfinite(weight).all():  # NaN or inf has no int8 scale
            raise int8_nonfinite_error(["a weight matrix"])
        n_rows, k_len = weight.shape
        amax = np.abs(weight).max(axis=1) if k_len else np.zeros(n_rows, np.float32)
        self.scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        self.q = np.zeros((n_rows, -(-k_len // _BLOCK) * _BLOCK), np.int8)
        self.q[:, :k_len] = np.clip(np.rint(weight / self.scale[:, None]), -127, 127)
        self.rowsum = self.q.sum(axis=1, dtype=np.int32)
        self.xu = np.zeros((1, self.q.shape[1]), np.uint8)
        self.acc = np.empty((4, n_rows), np.int32)  # up to four streams at a time

    def into(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out (B, N) = x (B, K) @ W^T, both float32 C-contiguous; returns out."""
        _qproduct(self.q, self.rowsum, self.scale, _NO_COLUMNS, x, self.scratch(len(x)), self.acc, out)
        return out

    def scratch(self, batch: int) -> np.ndarray:
        """The quantized-input buffer, for at least `batch` streams."""
        if self.xu.shape[0] < batch:
            self.xu = np.zeros((batch, self.q.shape[1]), np.uint8)
        return self.xu


_NO_COLUMNS = np.zeros((0, 0), np.float32)


class Int8Net(NumpyNet):
    """charrnn.sample.numpy_net.NumpyNet with int8 weights, each layer one compiled call: the
    product, the gates (with the fitted tanh above) and the new state."""

    product = Int8Dense

    def __init__(self, cfg: ModelConfig, w: dict[str, np.ndarray]) -> None:
        bad = nonfinite_arrays(w)
        if bad:
            raise int8_nonfinite_error(bad)
        super().__init__(cfg, w)
        # Per further layer, its bias as a one-row table read at row 0 (the first layer
        # reads its folded input table at the symbol's row).
        self.bias_rows = [entry[1][None, :] for entry in self.upper]  # lstm/rnn: bias; gru: b_ih
        self.zero_ids: dict[int, np.ndarray] = {}

    def _buffers(self, batch: int) -> list[tuple[np.ndarray, ...]]:
        width = GATES[self.kind] * self.hidden  # gate pre-activations; GRU uses both
        return [
            (np.empty((batch, width), np.float32), np.empty((batch, width), np.float32)) for _ in range(self.layers)
        ]

    def _inputs(self, i: int, inp: np.ndarray):
        """(x, base, ids) of layer i: the first reads the table at the symbols' rows."""
        if i == 0:
            return _NO_COLUMNS, self.table, inp
        ids = self.zero_ids.get(len(inp))
        if ids is None:
            ids = self.zero_ids[len(inp)] = np.zeros(len(inp), np.int64)
        return inp, self.bias_rows[i - 1], ids

    def _lstm(self, i: int, inp: np.ndarray, hc: tuple[np.ndarray, ...], buf: tuple) -> tuple[np.ndarray, ...]:
        h, c = hc
        x, base, ids = self._inputs(i, inp)
        dense = self.first_hh if i == 0 else self.upper[i - 1][0]
        h_out, c_out = np.empty_like(h), np.empty_like(c)
        _lstm_layer(
            dense.q,
            dense.rowsum,
            dense.scale,
            x,
            h,
            base,
            ids,
            c,
            dense.scratch(len(h)),
            dense.acc,
            buf[1],
            h_out,
            c_out,
        )
        return h_out, c_out

    def _rnn(self, i: int, inp: np.ndarray, hs: tuple[np.ndarray, ...], buf: tuple) -> tuple[np.ndarray, ...]:
        h = hs[0]
        x, base, ids = self._inputs(i, inp)
        dense = self.first_hh if i == 0 else self.upper[i - 1][0]
        h_out = np.empty_like(h)
        _rnn_layer(dense.q, dense.rowsum, dense.scale, x, h, base, ids, dense.scratch(len(h)), dense.acc, buf[1], h_out)
        return (h_out,)

    def _gru(self, i: int, inp: np.ndarray, hs: tuple[np.ndarray, ...], buf: tuple) -> tuple[np.ndarray, ...]:
        h = hs[0]
        x, base, ids = self._inputs(i, inp)
        if i == 0:
            ih, hh, bias_h = self.first_hh, self.first_hh, self.first_bias
        else:
            ih, _, hh, bias_h = self.upper[i - 1]
        h_out = np.empty_like(h)
        # One scratch serves both products: W_ih and W_hh rows have the same padded length.
        _gru_layer(
            ih.q,
            ih.rowsum,
            ih.scale,
            x,
            base,
            ids,
            hh.q,
            hh.rowsum,
            hh.scale,
            h,
            bias_h,
            hh.scratch(len(h)),
            hh.acc,
            buf[0],
            buf[1],
            h_out,
        )
        return (h_out,)
