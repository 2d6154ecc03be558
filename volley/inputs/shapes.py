"""Datatypes, shapes and image layout shared by every stage."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from volley.dist import Dist, DistError, parse_dist
from volley.plan import InputSpec, PlanError
from volley.shown import shown

#: KServe v2 datatype -> numpy dtype (little-endian on the wire).
DTYPES: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


def input_error(name: str, msg: str) -> PlanError:
    return PlanError(f"input {shown(name)}: {msg}")


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def element_count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def spec_dist(spec: InputSpec, key: str, text: str) -> Dist:
    try:
        return parse_dist(text)
    except DistError as exc:  # plans are validated when parsed; this is a safety net
        raise input_error(spec.name, f"{key}: {exc}") from None


def item_dims(spec: InputSpec, batched: bool) -> tuple[int, ...]:
    """The model's dims of one batch item (-1 = dynamic)."""
    dims = spec.model_dims
    return dims[1:] if batched and dims else dims


def hw_axes(spec: InputSpec, item: Sequence[int]) -> tuple[int, int, int | None]:
    """(H axis, W axis, channel axis or None) of an image-like input's item dims."""
    rank = len(item)
    layout = spec.layout
    if not layout:
        if rank == 2:
            layout = "HW"
        elif rank == 3:
            last, first = item[-1], item[0]
            layout = "CHW" if first in (1, 3, 4) and last not in (1, 3, 4) else "HWC"
    if layout == "HW" and rank == 2:
        return 0, 1, None
    if layout == "HWC" and rank == 3:
        return 0, 1, 2
    if layout == "CHW" and rank == 3:
        return 1, 2, 0
    raise input_error(
        spec.name,
        f"cannot place height and width in dims {list(item)} (layout {layout or '?'}); "
        "images need 2 (HW) or 3 (HWC/CHW) dims",
    )


def check_item(spec: InputSpec, shape: Sequence[int], model: Sequence[int], what: str) -> None:
    if len(shape) != len(model):
        raise input_error(
            spec.name,
            f"{what} {shape_text(shape)} has rank {len(shape)}, model expects rank "
            f"{len(model)} {list(model)}",
        )
    for i, (want, have) in enumerate(zip(shape, model, strict=True)):
        if have != -1 and want != have:
            raise input_error(
                spec.name, f"{what}: dim {i} is {want}, model expects {have} (dims {list(model)})"
            )


def fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def is_image_like(spec: InputSpec, batched: bool) -> bool:
    item = item_dims(spec, batched)
    if spec.datatype == "BYTES" or len(item) not in (2, 3):
        return False
    try:
        hw_axes(spec, item)
    except PlanError:
        return False
    return True
