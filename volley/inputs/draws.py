"""Stage 3 (every worker): sample the plan's distributions into payload draws."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from volley.dist import Dist, parse_dist, parse_weighted_shape
from volley.inputs.items import ItemCache
from volley.inputs.shapes import (
    DTYPES,
    element_count,
    hw_axes,
    input_error,
    item_dims,
    shape_text,
    spec_dist,
)
from volley.plan import InputSpec, Plan

DEFAULT_LENGTH = 16


@dataclass(frozen=True)
class Factor:
    """One quantity that varies between payloads."""

    key: tuple[Any, ...]
    dist: Dist


@dataclass(frozen=True)
class InputDraw:
    shape: tuple[int, ...]  #: the tensor's shape (batch dim included when the model batches)
    item: int = -1  #: first embedded item (files/json)
    length: int = -1  #: BYTES element length
    resize: tuple[int, int] | None = None  #: images from files: resize to (H, W)


@dataclass(frozen=True)
class Draw:
    weight: float
    batch: int  #: 0 when the model does not batch
    inputs: tuple[InputDraw, ...]

    def text(self) -> str:
        parts = []
        for d in self.inputs:
            t = shape_text(d.shape)
            if d.length >= 0:
                t += f"[{d.length}B]"
            parts.append(t)
        return ";".join(parts)


def factors(plan: Plan) -> list[Factor]:
    out: list[Factor] = []
    batched = plan.max_batch_size > 0
    if batched and plan.batch_size:
        bd = parse_dist(plan.batch_size)
        if not bd.is_fixed:
            out.append(Factor(("batch",), bd))
    json_groups: set[str] = set()
    for j, spec in enumerate(plan.inputs):
        for i, text in enumerate(spec.dims):
            d = spec_dist(spec, "dims", text)
            if not d.is_fixed:
                out.append(Factor((j, "dim", i), d))
        if spec.shapes:
            ws = [parse_weighted_shape(t) for t in spec.shapes]
            if len(ws) > 1:
                out.append(
                    Factor(
                        (j, "shape"),
                        Dist(
                            "choice",
                            values=tuple(float(k) for k in range(len(ws))),
                            weights=tuple(w.weight for w in ws),
                        ),
                    )
                )
        if spec.pixels:
            for key in ("pixels", "aspect"):
                text = getattr(spec, key)
                if text and not (d := spec_dist(spec, key, text)).is_fixed:
                    out.append(Factor((j, key), d))
        if spec.length and not (d := spec_dist(spec, "length", spec.length)).is_fixed:
            out.append(Factor((j, "length"), d))
        if len(spec.items) > 1:
            uniform = Dist(
                "choice",
                values=tuple(float(k) for k in range(len(spec.items))),
                weights=(1.0,) * len(spec.items),
            )
            if spec.source == "json":
                if spec.path not in json_groups:
                    json_groups.add(spec.path)
                    out.append(Factor(("json", spec.path), uniform))
            else:
                out.append(Factor((j, "item"), uniform))
    return out


def _assignments(
    fs: Sequence[Factor], n: int, seed: int, copies_for_data: bool, copies_n: int
) -> tuple[list[tuple[dict[tuple[Any, ...], float], float]], bool]:
    """[(factor values, weight)] for the pool, and whether the weights are exact.

    Exact: every combination of discrete values, with its probability; when the data is
    random each combination gets about `copies_n * probability` copies (at least one) of
    different data, sharing its weight. Otherwise: `n` stratified draws, equal weights.
    """
    supports = [f.dist.support() if f.dist.is_discrete else None for f in fs]
    combos = 1
    for s in supports:
        combos = combos * len(s) if s is not None and combos <= n else n + 1
    if all(s is not None for s in supports) and combos <= n:
        out: list[tuple[dict[tuple[Any, ...], float], float]] = []
        for combo in itertools.product(*[s for s in supports if s is not None]):
            prob = math.prod(p for _, p in combo)
            copies = max(1, round(copies_n * prob)) if copies_for_data else 1
            values = {f.key: v for f, (v, _) in zip(fs, combo, strict=True)}
            out.extend((values, prob / copies) for _ in range(copies))
        return out, True
    rng = np.random.default_rng([seed, 0x1A7E])
    cols: dict[tuple[Any, ...], list[float]] = {}
    for f in fs:
        u = (rng.permutation(n) + rng.random(n)) / n
        cols[f.key] = [f.dist.quantile(float(x)) for x in u]
    return [({k: v[p] for k, v in cols.items()}, 1.0 / n) for p in range(n)], False


def round_dim(v: float) -> int:
    return max(0, math.floor(v + 0.5))


def _input_draw(
    plan: Plan, j: int, values: dict[tuple[Any, ...], float], batch: int, cache: ItemCache | None
) -> InputDraw:
    spec = plan.inputs[j]
    batched = plan.max_batch_size > 0
    model_item = item_dims(spec, batched)
    item_shape: tuple[int, ...] | None = None
    if spec.shape and not spec.items:
        return InputDraw(shape=spec.shape, length=_length(spec, values, j))
    if spec.dims:
        item_shape = tuple(
            round_dim(values.get((j, "dim", i), spec_dist(spec, "dims", t).quantile(0.5)))
            for i, t in enumerate(spec.dims)
        )
    elif spec.shapes:
        k = int(values.get((j, "shape"), 0))
        item_shape = parse_weighted_shape(spec.shapes[k]).shape
    elif spec.pixels:
        px = values.get((j, "pixels"), spec_dist(spec, "pixels", spec.pixels).quantile(0.5))
        ar = (
            values.get((j, "aspect"), spec_dist(spec, "aspect", spec.aspect).quantile(0.5))
            if (spec.aspect)
            else 1.0
        )
        h = max(1, round_dim(math.sqrt(px / ar)))
        w = max(1, round_dim(math.sqrt(px * ar)))
        ha, wa, _ = hw_axes(spec, model_item)
        dims = list(model_item)
        dims[ha], dims[wa] = h, w
        item_shape = tuple(dims)
    item = -1
    if spec.items:
        key = ("json", spec.path) if spec.source == "json" else (j, "item")
        item = int(values.get(key, 0))
    resize: tuple[int, int] | None = None
    if item_shape is None:
        if spec.items:
            assert cache is not None
            item_shape = cache.info(item).shape
        else:
            item_shape = tuple(model_item)
    elif spec.items and spec.items[item].kind == "image":
        ha, wa, _ = hw_axes(spec, item_shape)
        resize = (item_shape[ha], item_shape[wa])
    elif spec.items:
        assert cache is not None
        own = cache.info(item).shape
        if own != item_shape:
            raise input_error(
                spec.name,
                f"{cache.where(item)} has shape {shape_text(own)}, not {shape_text(item_shape)}:"
                " only images can be resized to a given shape",
            )
    shape = (batch, *item_shape) if batched else item_shape
    return InputDraw(shape=shape, item=item, length=_length(spec, values, j), resize=resize)


def _length(spec: InputSpec, values: dict[tuple[Any, ...], float], j: int) -> int:
    if spec.datatype != "BYTES" or spec.items:
        return -1
    if spec.source == "constant":
        return len(str(spec.value if spec.value is not None else "").encode())
    if not spec.length:
        return 0 if spec.source == "zeros" else DEFAULT_LENGTH
    return round_dim(
        values.get((j, "length"), spec_dist(spec, "length", spec.length).quantile(0.5))
    )


def draw_payloads(
    plan: Plan,
    n: int,
    caches: Sequence[ItemCache | None] | None = None,
    copies_n: int | None = None,
) -> tuple[list[Draw], bool]:
    """About n payload draws, and whether their weights are exact (see _assignments)."""
    fs = factors(plan)
    caches = caches if caches is not None else make_caches(plan)
    random_data = any(s.source == "random" for s in plan.inputs)
    assigned, exact = _assignments(
        fs, n, plan.seed, random_data, n if copies_n is None else copies_n
    )
    batched = plan.max_batch_size > 0
    base_batch = int(parse_dist(plan.batch_size).max()) if batched and plan.batch_size else 1
    draws = []
    for values, weight in assigned:
        if not batched:
            batch = 0
        elif plan.batch_size:
            batch = max(1, round_dim(values.get(("batch",), base_batch)))
        else:
            batch = next((s.shape[0] for s in plan.inputs if s.shape), 1)
        ins = tuple(_input_draw(plan, j, values, batch, caches[j]) for j in range(len(plan.inputs)))
        draws.append(Draw(weight, batch, ins))
    return draws, exact


def make_caches(plan: Plan) -> list[ItemCache | None]:
    batched = plan.max_batch_size > 0
    return [ItemCache(s, batched) if s.items else None for s in plan.inputs]


def draw_nbytes(plan: Plan, draw: Draw, caches: Sequence[ItemCache | None]) -> int:
    """Tensor data bytes of a draw (exact for the data; framing is added by the caller)."""
    total = 0
    for spec, d, cache in zip(plan.inputs, draw.inputs, caches, strict=True):
        count = element_count(d.shape)
        if spec.datatype == "BYTES":
            if cache is not None and d.item >= 0:
                per = max(1, draw.batch)
                total += sum(cache.info((d.item + b) % len(spec.items)).nbytes for b in range(per))
            else:
                total += count * (4 + max(d.length, 0))
        else:
            total += count * DTYPES[spec.datatype].itemsize
    return total
