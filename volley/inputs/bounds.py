"""Upper bounds of input sizes over a plan's distributions (for preflight)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from volley.dist import parse_dist, parse_weighted_shape
from volley.inputs.draws import Draw, round_dim
from volley.inputs.shapes import (
    DTYPES,
    element_count,
    fmt_num,
    hw_axes,
    item_dims,
    shape_text,
    spec_dist,
)
from volley.plan import Plan


def max_item_shape(plan: Plan, j: int, draws: Sequence[Draw]) -> tuple[float, ...]:
    """Per-dim upper bound of input j's item shape: the distributions' bounds where they
    are finite, else the largest drawn."""
    spec = plan.inputs[j]
    batched = plan.max_batch_size > 0
    drawn = [d.inputs[j].shape[1:] if batched else d.inputs[j].shape for d in draws]
    rank = len(drawn[0]) if drawn else 0
    most: list[float] = [max((s[i] for s in drawn), default=0) for i in range(rank)]
    if spec.dims:
        for i, t in enumerate(spec.dims):
            bound = spec_dist(spec, "dims", t).max()
            if math.isfinite(bound):
                most[i] = max(most[i], float(round_dim(bound)))
    elif spec.shapes:
        for t in spec.shapes:
            ws = parse_weighted_shape(t)
            most = [max(a, float(b)) for a, b in zip(most, ws.shape, strict=True)]
    return tuple(most)


def max_pixels(plan: Plan, j: int, draws: Sequence[Draw]) -> tuple[float, str]:
    """Largest H*W input j can have, and a text of that size."""
    spec = plan.inputs[j]
    batched = plan.max_batch_size > 0
    model_item = item_dims(spec, batched)
    ha, wa, _ = hw_axes(spec, model_item)
    best, text = 0.0, ""
    for d in draws:
        s = d.inputs[j].shape[1:] if batched else d.inputs[j].shape
        px = float(s[ha] * s[wa])
        if px > best:
            best, text = px, f"{s[ha]}x{s[wa]}"
    if spec.pixels:
        bound = spec_dist(spec, "pixels", spec.pixels).max()
        if math.isfinite(bound) and bound > best:
            best, text = bound, f"up to {fmt_num(bound)} pixels"
    elif spec.dims or spec.shapes:
        if spec.shapes:
            for t in spec.shapes:
                ws = parse_weighted_shape(t).shape
                if ws[ha] * ws[wa] > best:
                    best, text = float(ws[ha] * ws[wa]), f"{ws[ha]}x{ws[wa]}"
        else:
            mh = spec_dist(spec, "dims", spec.dims[ha]).max()
            mw = spec_dist(spec, "dims", spec.dims[wa]).max()
            if math.isfinite(mh * mw) and mh * mw > best:
                best, text = mh * mw, f"{fmt_num(mh)}x{fmt_num(mw)}"
    return best, text


def input_bytes_bound(plan: Plan, j: int, draws: Sequence[Draw]) -> tuple[float, str]:
    """Largest tensor data input j can have in a request, and its shape as text: the
    distributions' bounds where finite, else the largest drawn."""
    spec = plan.inputs[j]
    batched = plan.max_batch_size > 0
    best, text = 0.0, ""
    for d in draws:
        if spec.datatype == "BYTES":
            n = element_count(d.inputs[j].shape) * (4 + max(d.inputs[j].length, 0))
        else:
            n = element_count(d.inputs[j].shape) * DTYPES[spec.datatype].itemsize
        if n > best:
            best, text = float(n), shape_text(d.inputs[j].shape)
    if spec.datatype == "BYTES" or spec.items or not (spec.dims or spec.shapes or spec.pixels):
        return best, text
    max_batch = 1.0
    if batched and plan.batch_size:
        max_batch = parse_dist(plan.batch_size).max()
    itemsize = DTYPES[spec.datatype].itemsize
    if spec.pixels:
        model_item = item_dims(spec, batched)
        _, _, c = hw_axes(spec, model_item)
        channels = model_item[c] if c is not None else 1
        bound = spec_dist(spec, "pixels", spec.pixels).max() * channels * itemsize * max_batch
        shown = f"{fmt_num(spec_dist(spec, 'pixels', spec.pixels).max())} pixels x {channels}"
    else:
        most = max_item_shape(plan, j, draws)
        bound = float(math.prod(most)) * itemsize * max_batch
        shown = "x".join(fmt_num(x) for x in most)
    if batched:
        shown = f"{fmt_num(max_batch)}x{shown}"
    if math.isfinite(bound) and bound > best:
        best, text = bound, shown
    return best, text
