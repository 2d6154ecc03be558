"""Slicing the one global schedule (invariant 1): a smooth weighted round-robin pattern,
the owner and local ordinal of a global index computed arithmetically from it, an
owner's slice (agents, then the same functions again for workers), and the
largest-remainder split of a closed-loop level.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from numbers import Integral
from typing import Final

import numpy as np
import numpy.typing as npt

from volley.schedule.profiles import I64
from volley.shown import shown

#: Largest ``sum(weights)`` accepted for a round-robin pattern.
MAX_PATTERN: Final = 1_000_000


# =============================================================================== slicing
def _check_weights(weights: Sequence[int]) -> tuple[int, ...]:
    w = tuple(weights)
    if not w:
        raise ValueError("weights must not be empty")
    for x in w:
        if isinstance(x, bool) or not isinstance(x, Integral) or x <= 0:
            raise ValueError(f"weights must be positive integers, got {shown(list(w))}")
    if sum(int(x) for x in w) > MAX_PATTERN:
        raise ValueError(f"sum(weights) must be at most {MAX_PATTERN:,}")
    return tuple(int(x) for x in w)


@lru_cache(maxsize=256)
def _pattern(weights: tuple[int, ...]) -> I64:
    total = sum(weights)
    current = [0] * len(weights)
    out = np.empty(total, dtype=np.int64)
    for slot in range(total):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out[slot] = best
    out.flags.writeable = False
    return out


def weighted_pattern(weights: Sequence[int]) -> I64:
    """Smooth weighted round-robin (nginx): a sequence of length ``sum(weights)`` in which
    owner k appears exactly ``weights[k]`` times, spread evenly (ties go to the lowest
    index). E.g. ``[1, 3, 2]`` → ``[1, 2, 0, 1, 2, 1]``. The array is read-only."""
    return _pattern(_check_weights(weights))


def _as_pattern(pattern: npt.ArrayLike) -> I64:
    p = np.asarray(pattern, dtype=np.int64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError("pattern must be a non-empty 1-D array")
    return p


def owner_of(global_index: npt.ArrayLike, pattern: npt.ArrayLike) -> I64:
    """Owner of each arrival: ``pattern[index % len(pattern)]``."""
    p = _as_pattern(pattern)
    idx = np.asarray(global_index, dtype=np.int64)
    return p[idx % len(p)]


def local_ordinal(global_index: npt.ArrayLike, pattern: npt.ArrayLike, k: int) -> I64:
    """Position of each of owner k's arrivals within k's own slice (0, 1, 2, …),
    computed arithmetically: ``(i // P) * w_k + rank of slot i % P among k's slots``.
    Raises ``ValueError`` if an index is not owned by k."""
    p = _as_pattern(pattern)
    idx = np.asarray(global_index, dtype=np.int64)
    mine = np.flatnonzero(p == k)
    if mine.size == 0:
        raise ValueError(f"owner {k} does not appear in the pattern")
    rank = np.full(len(p), -1, dtype=np.int64)
    rank[mine] = np.arange(mine.size, dtype=np.int64)
    r = rank[idx % len(p)]
    if r.size and r.min() < 0:
        raise ValueError(f"some indices are not owned by {k}")
    return (idx // len(p)) * mine.size + r


def _check_owner(k: int, n: int, what: str) -> None:
    if not 0 <= k < n:
        raise ValueError(f"{what} {k} out of range for {n} weights")


def slice_for(
    index: npt.ArrayLike, t_ns: npt.ArrayLike, weights: Sequence[int], k: int
) -> tuple[I64, I64]:
    """Owner k's arrivals from a chunk ``(global_index, t_ns)`` of the global schedule."""
    w = _check_weights(weights)
    _check_owner(k, len(w), "owner")
    idx = np.asarray(index, dtype=np.int64)
    t = np.asarray(t_ns, dtype=np.int64)
    mask = owner_of(idx, _pattern(w)) == k
    return idx[mask], t[mask]


def worker_slice(
    index: npt.ArrayLike,
    t_ns: npt.ArrayLike,
    agent_weights: Sequence[int],
    agent_k: int,
    worker_weights: Sequence[int],
    worker_j: int,
) -> tuple[I64, I64]:
    """Worker j of agent k's arrivals (global index, t_ns): agent k's slice, split among
    its workers by the same round-robin applied to the agent-local ordinals."""
    ww = _check_weights(worker_weights)
    _check_owner(worker_j, len(ww), "worker")
    aidx, at = slice_for(index, t_ns, agent_weights, agent_k)
    local = local_ordinal(aidx, _pattern(_check_weights(agent_weights)), agent_k)
    mask = owner_of(local, _pattern(ww)) == worker_j
    return aidx[mask], at[mask]


# =============================================================================== closed loop
def split_count(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` by the largest-remainder method
    (exact integer arithmetic; ties go to the lowest index). Sums to ``total``."""
    w = _check_weights(weights)
    if isinstance(total, bool) or not isinstance(total, Integral) or total < 0:
        raise ValueError(f"total must be a non-negative integer, got {shown(total)}")
    n, s = int(total), sum(w)
    base = [n * x // s for x in w]
    rem = [n * x % s for x in w]
    left = n - sum(base)
    for i in sorted(range(len(w)), key=lambda i: (-rem[i], i))[:left]:
        base[i] += 1
    return base
