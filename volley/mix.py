"""Mixed traffic: which model each arrival of the one schedule goes to (pure, seeded).

Arrival i goes to model `pick(i)`, drawn from the models' weights by a counter-based
hash of (seed, i): deterministic, the same on every agent whatever the split, and
independent of the agents' round-robin slicing (a round-robin over models would
hand some agents one model only).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    z = x * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    out: npt.NDArray[np.uint64] = z ^ (z >> np.uint64(31))
    return out


class ModelMix:
    """Weighted choice of a model per arrival index."""

    def __init__(self, weights: list[float], seed: int) -> None:
        if not weights or any(not w > 0 for w in weights):
            raise ValueError("model weights must be > 0")
        total = float(sum(weights))
        self.n = len(weights)
        self.cum = np.cumsum(np.asarray(weights, np.float64) / total)
        self.cum[-1] = 1.0
        self.key = np.uint64((seed * 0x2545F4914F6CDD1D + 0x632BE59BD9B4E019) % 2**64)

    def pick(self, index: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
        """Model id of each arrival index (int array of the same shape)."""
        if self.n == 1:
            return np.zeros(index.shape, np.intp)
        with np.errstate(over="ignore"):
            h = _splitmix(index.astype(np.uint64) ^ self.key)
        u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
        out: npt.NDArray[np.intp] = np.searchsorted(self.cum, u, side="right").astype(np.intp)
        return np.minimum(out, self.n - 1)

    def pick_one(self, index: int) -> int:
        return int(self.pick(np.asarray([index], np.int64))[0])
