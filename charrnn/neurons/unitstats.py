"""Statistics of unit activations accumulated chunk by chunk, and rankings of units.

`UnitScan` keeps, per activation kind, running means, variances and
co-moments with text features (merged per chunk as in Chan, Golub & LeVeque
1979), so Pearson correlations over a whole file need O(units x features)
memory. `GateCounts` counts how often each gate unit is saturated (Karpathy,
Johnson & Fei-Fei 2015: left < 0.1, right > 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from charrnn.neurons.activations import GATE_KINDS, Chunk


class Moments:
    """Running statistics of x (U columns, or any shape `units` per row) and y (F columns).

    Each added chunk is reduced in float32 with torch (its own mean and centred sum of
    squares, and x^T y against y centred in float64, which equals the centred co-moment
    because the centred y sums to 0), then merged into float64 totals, so rounding stays at
    the level of one chunk however long the text.
    """

    def __init__(self, units: int | tuple[int, ...], features: int) -> None:
        shape = (units,) if isinstance(units, int) else tuple(units)
        self.n = 0
        self.mean_x = np.zeros(shape)
        self.mean_y = np.zeros(features)
        self.m2_x = np.zeros(shape)  # sum of squared deviations
        self.m2_y = np.zeros(features)
        self.c_xy = np.zeros(shape + (features,))  # sum of deviation products

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """x (M, U) or (..., M, U) matching `units`, y (M, F): merge these M rows."""
        import torch

        m = x.shape[-2]
        if m == 0:
            return
        xt = torch.as_tensor(x)
        xt = xt if xt.dtype == torch.float64 else xt.float()  # float32 activations stay float32
        # Shifted by the chunk's first row, so a constant unit sums to exactly 0 (no spurious r).
        xs = xt - xt[..., :1, :]
        # Plain sums and (F, M) @ (M, U) matmuls: torch's var_mean over the middle dimension and
        # a matmul against a transposed x are several times slower.
        shift_mean = xs.sum(dim=-2, keepdim=True) / m
        y = np.asarray(y, dtype=np.float64)
        my = y.mean(0)
        yc = y - my
        if y.shape[1]:
            yt = torch.from_numpy(np.ascontiguousarray(yc.T)).to(xt.dtype)  # (F, M)
            c = (yt @ xs).transpose(-1, -2).double().numpy()  # (..., U, F) = xs^T yc
            # xs^T yc = (xs - mean)^T yc + mean * sum(yc); the second term is rounding (yc sums
            # to 0 only in exact arithmetic), removed so that a large mean costs no accuracy.
            c -= shift_mean.squeeze(-2).double().numpy()[..., None] * yt.double().sum(1).numpy()
        else:
            c = np.zeros(tuple(xt.shape[:-2]) + (xt.shape[-1], 0))
        mx = (xt[..., 0, :].double() + shift_mean.squeeze(-2).double()).numpy()
        m2 = xs.sub_(shift_mean).square_().sum(dim=-2).double().numpy()
        n = self.n + m
        dx, dy = mx - self.mean_x, my - self.mean_y
        w = self.n * m / n
        self.m2_x += m2 + dx * dx * w
        self.m2_y += (yc * yc).sum(0) + dy * dy * w
        self.c_xy += c + dx[..., None] * dy * w
        self.mean_x += dx * m / n
        self.mean_y += dy * m / n
        self.n = n

    def variance(self) -> np.ndarray:
        """(U,) population variance of each x column."""
        return self.m2_x / max(self.n, 1)

    def correlation(self) -> np.ndarray:
        """(U, F) Pearson r; 0 where a column is constant."""
        denom = np.sqrt(self.m2_x[..., None] * self.m2_y)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(denom > 0, self.c_xy / np.where(denom > 0, denom, 1.0), 0.0)
        return np.clip(r, -1.0, 1.0)

    def feature_variance(self) -> np.ndarray:
        """(F,) population variance of each y column."""
        return self.m2_y / max(self.n, 1)


@dataclass(frozen=True)
class UnitScore:
    layer: int
    unit: int
    kind: str
    value: float  # Pearson r, or variance, depending on the ranking


class UnitScan:
    """Consumer: per-unit variance and correlation with features, for the chosen kinds.

    features (N, F) holds F features of the whole text (None for variance only).
    """

    def __init__(self, kinds: dict[str, int], num_layers: int, features: np.ndarray | None = None) -> None:
        self.kinds = dict(kinds)
        self.num_layers = num_layers
        self.features = features
        f = 0 if features is None else features.shape[1]
        self.moments = {k: Moments((num_layers, u), f) for k, u in self.kinds.items()}

    @property
    def needs(self) -> set[str]:
        return set(self.kinds)

    def add(self, chunk: Chunk) -> None:
        m = len(chunk.pos)
        if self.features is None:
            y = np.zeros((m, 0))
        else:
            y = self.features[chunk.pos]
        for kind, moments in self.moments.items():
            moments.add(chunk.acts[kind], y)  # (L, M, U)

    def variances(self) -> dict[str, np.ndarray]:
        """kind -> (L, U) variance of each unit over the text."""
        return {k: m.variance() for k, m in self.moments.items()}

    def correlations(self, feature: int) -> dict[str, np.ndarray]:
        """kind -> (L, U) Pearson r of each unit with feature column `feature`."""
        return {k: m.correlation()[..., feature] for k, m in self.moments.items()}

    def feature_is_constant(self, feature: int) -> bool:
        moments = next(iter(self.moments.values()))
        return bool(moments.feature_variance()[feature] <= 1e-12)


class UnitRecorder:
    """Consumer: the values of a few units of one kind at every position, (N, K) in text order."""

    def __init__(self, kind: str, units: list[tuple[int, int]], n: int) -> None:
        self.kind = kind
        self.units = list(units)  # (layer, unit), one column each
        self.values = np.zeros((n, len(self.units)), np.float32)
        self._layers = np.array([l for l, _ in self.units], dtype=np.int64)
        self._cols = np.array([u for _, u in self.units], dtype=np.int64)

    @property
    def needs(self) -> set[str]:
        return {self.kind}

    def add(self, chunk: Chunk) -> None:
        self.values[chunk.pos] = chunk.acts[self.kind][self._layers, :, self._cols].T  # (M, K)


def rank_units(
    values: dict[str, np.ndarray], top: int, by_abs: bool = True, layer: int | None = None
) -> list[UnitScore]:
    """The `top` units with the largest value (|value| when by_abs), best first.

    values: kind -> (L, U); layer restricts the ranking to one layer.
    Ties keep kind order, then layer, then unit.
    """
    scores: list[UnitScore] = []
    for kind, table in values.items():
        for l_idx in range(table.shape[0]):
            if layer is not None and l_idx != layer:
                continue
            for u_idx, v in enumerate(table[l_idx]):
                if np.isfinite(v):
                    scores.append(UnitScore(l_idx, u_idx, kind, float(v)))
    key = (lambda s: -abs(s.value)) if by_abs else (lambda s: -s.value)
    return sorted(scores, key=key)[:top]  # sorted() is stable


class GateCounts:
    """Consumer: how often each gate unit is left-saturated (< low) or right-saturated (> high)."""

    def __init__(self, kinds: dict[str, int], num_layers: int, low: float = 0.1, high: float = 0.9):
        self.low, self.high = low, high
        self.gates = [k for k in kinds if k in GATE_KINDS]
        self.n = 0
        self.left = {k: np.zeros((num_layers, kinds[k]), np.int64) for k in self.gates}
        self.right = {k: np.zeros((num_layers, kinds[k]), np.int64) for k in self.gates}

    @property
    def needs(self) -> set[str]:
        return set(self.gates)

    def add(self, chunk: Chunk) -> None:
        for kind in self.gates:
            value = chunk.acts[kind]  # (L, M, U)
            # NumPy's count_nonzero, not torch's sum of a boolean tensor: much faster over the middle dimension
            self.left[kind] += np.count_nonzero(value < self.low, axis=1)
            self.right[kind] += np.count_nonzero(value > self.high, axis=1)
        self.n += len(chunk.pos)

    def fractions(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """gate kind -> (left, right), each (L, U) fraction of positions in [0, 1]."""
        n = max(self.n, 1)
        return {k: (self.left[k] / n, self.right[k] / n) for k in self.gates}


@dataclass(frozen=True)
class GateSummary:
    kind: str
    layer: int
    units: int
    left_mean: float  # mean over units of the fraction of time < low
    right_mean: float  # mean over units of the fraction of time > high
    mostly_left: int  # units left-saturated more than half the time
    mostly_right: int  # units right-saturated more than half the time
    rarely: int  # units saturated (either side) less than 10% of the time


def summarise_gates(counts: GateCounts) -> list[GateSummary]:
    """One GateSummary per (layer, gate kind), layers first."""
    rows: list[GateSummary] = []
    fractions = counts.fractions()
    layers = next(iter(fractions.values()))[0].shape[0] if fractions else 0
    for layer in range(layers):
        for kind, (left, right) in fractions.items():
            lf, rf = left[layer], right[layer]
            rows.append(
                GateSummary(
                    kind=kind,
                    layer=layer,
                    units=len(lf),
                    left_mean=float(lf.mean()),
                    right_mean=float(rf.mean()),
                    mostly_left=int((lf > 0.5).sum()),
                    mostly_right=int((rf > 0.5).sum()),
                    rarely=int(((lf + rf) < 0.1).sum()),
                )
            )
    return rows
