"""Payload draws to tensors: the data of each input, ready for the wire."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from volley.inputs.draws import Draw, InputDraw, make_caches
from volley.inputs.items import ItemCache
from volley.inputs.shapes import DTYPES, element_count, input_error, shape_text
from volley.plan import MAX_INPUT_BYTES, InputSpec, Plan
from volley.shown import shown


@dataclass(frozen=True)
class Tensor:
    """One input tensor ready for the wire: raw little-endian data (BYTES: length-prefixed)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes


def _random_array(
    dt: np.dtype[np.generic], shape: tuple[int, ...], rng: np.random.Generator
) -> npt.NDArray[Any]:
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    if dt == np.dtype("<u1"):
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if dt.kind in "iu":
        info = np.iinfo(dt.type)  # type: ignore[type-var]
        lo, hi = max(int(info.min), -128), min(int(info.max), 255)
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dt)
    return rng.standard_normal(size=shape).astype(dt)


def _bytes_elems(spec: InputSpec, d: InputDraw, rng: np.random.Generator) -> bytes:
    count = element_count(d.shape)
    n = max(d.length, 0)
    prefix = n.to_bytes(4, "little")
    if spec.source == "constant":
        value = str(spec.value if spec.value is not None else "").encode()
        return (len(value).to_bytes(4, "little") + value) * count
    if spec.source == "zeros":
        return (prefix + bytes(n)) * count
    letters = rng.integers(97, 123, size=(count, n), dtype=np.uint8)
    return b"".join(prefix + row.tobytes() for row in letters)


def make_tensors(
    plan: Plan, draw: Draw, index: int, caches: Sequence[ItemCache | None]
) -> list[Tensor]:
    """Tensors of payload `index` (its random data comes from the seed and the index)."""
    rng = np.random.default_rng([plan.seed, 0xDA7A, index])
    out = []
    batched = plan.max_batch_size > 0
    for spec, d, cache in zip(plan.inputs, draw.inputs, caches, strict=True):
        data = _tensor_data(spec, d, rng, cache, batched, draw.batch)
        out.append(Tensor(spec.name, spec.datatype, d.shape, data))
    return out


def _tensor_data(
    spec: InputSpec,
    d: InputDraw,
    rng: np.random.Generator,
    cache: ItemCache | None,
    batched: bool,
    batch: int,
) -> bytes:
    if cache is not None and d.item >= 0:
        n_items = len(spec.items)
        per = batch if batched else 1
        ks = [(d.item + b) % n_items for b in range(per)]
        if spec.datatype == "BYTES":
            shapes_b = {cache.info(k).shape for k in ks}
            if len(shapes_b) > 1:
                names = ", ".join(f"{cache.where(k)} {shape_text(cache.info(k).shape)}" for k in ks)
                raise input_error(
                    spec.name, f"items of different shapes cannot share a batch ({names})"
                )
            return b"".join(cache.element(k) for k in ks)
        arrays = [cache.array(k, d.resize) for k in ks]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            names = ", ".join(
                f"{cache.where(k)} {shape_text(a.shape)}" for k, a in zip(ks, arrays, strict=True)
            )
            raise input_error(
                spec.name,
                f"items of different shapes cannot share a batch ({names}); "
                "give shapes, dims or pixels to resize images",
            )
        arr = np.stack(arrays) if batched else arrays[0]
        return np.ascontiguousarray(arr).tobytes()
    if spec.datatype == "BYTES":
        return _bytes_elems(spec, d, rng)
    dt = DTYPES[spec.datatype]
    nbytes = element_count(d.shape) * dt.itemsize
    if nbytes > MAX_INPUT_BYTES:
        raise input_error(
            spec.name,
            f"shape {shape_text(d.shape)} is {nbytes} bytes, over the {MAX_INPUT_BYTES}-byte limit",
        )
    if spec.source == "zeros":
        return bytes(nbytes)
    if spec.source == "constant":
        try:
            return np.full(d.shape, spec.value if spec.value is not None else 0, dtype=dt).tobytes()
        except (TypeError, ValueError, OverflowError):
            raise input_error(
                spec.name, f"constant {shown(spec.value)} is not a valid {spec.datatype}"
            ) from None
    return _random_array(dt, d.shape, rng).tobytes()


def iter_tensors(plan: Plan, draws: Sequence[Draw]) -> Iterator[list[Tensor]]:
    caches = make_caches(plan)
    for p, d in enumerate(draws):
        yield make_tensors(plan, d, p, caches)
