"""Stage 1 (preflight): resolve input specs against the model's metadata."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from volley.dist import parse_dist, parse_weighted_shape
from volley.inputs.shapes import (
    DTYPES,
    check_item,
    fmt_num,
    hw_axes,
    input_error,
    item_dims,
    shape_text,
    spec_dist,
)
from volley.plan import InputSpec, Plan, PlanError
from volley.shown import shown


def resolve_specs(
    plan: Plan,
    model_inputs: Sequence[tuple[str, str, tuple[int, ...]]],
    max_batch_size: int,
    model_name: str,
    default_batch: int = 1,
) -> Plan:
    """Fill datatypes and dims from the model's metadata and check what the user said."""
    given = {s.name: s for s in plan.inputs}
    names = [n for n, _, _ in model_inputs]
    if "" in given:  # --prompts without --prompt-input: the model's only BYTES input
        texts = [n for n, dt, _ in model_inputs if dt == "BYTES"]
        if len(texts) != 1:
            raise PlanError(
                f"--prompts: model {shown(model_name)} has {len(texts)} BYTES inputs "
                f"({', '.join(texts) or 'none'}); name one with --prompt-input"
            )
        if texts[0] in given:
            raise PlanError(f"input {shown(texts[0])}: given twice (and by --prompts)")
        given[texts[0]] = dataclasses.replace(given.pop(""), name=texts[0])
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise PlanError(
            f"input {shown(unknown[0])} is not an input of model {shown(model_name)} "
            f"(its inputs: {', '.join(sorted(names))})"
        )
    batched = max_batch_size > 0
    full_batches: set[int] = set()
    staged: list[tuple[InputSpec, tuple[int, ...] | None]] = []  # (spec, fixed item dims)
    for name, datatype, mshape in model_inputs:
        spec = given.get(name, InputSpec(name=name))
        if spec.datatype and spec.datatype != datatype:
            raise input_error(name, f"plan says {spec.datatype}, model expects {datatype}")
        if datatype not in DTYPES and datatype != "BYTES":
            raise input_error(name, f"datatype {datatype} is not supported")
        spec = dataclasses.replace(spec, datatype=datatype, model_dims=tuple(mshape))
        model_item = item_dims(spec, batched)
        fixed: tuple[int, ...] | None = None
        if spec.shape:
            shape = spec.shape
            if batched and len(shape) == len(mshape):
                if plan.batch_size:
                    raise input_error(
                        name,
                        f"shape {shape_text(shape)} gives a batch dim and plan.batch_size is "
                        "set: leave the batch dim out of the shape",
                    )
                if shape[0] > max_batch_size:
                    raise input_error(
                        name,
                        f"batch {shape[0]} is over the model's max_batch_size {max_batch_size}",
                    )
                full_batches.add(shape[0])
                shape = shape[1:]
            elif len(shape) != len(model_item):
                ranks = (
                    f"{len(model_item)} (one batch item) or {len(mshape)} (with the batch dim)"
                    if batched
                    else str(len(mshape))
                )
                raise input_error(
                    name,
                    f"shape {list(spec.shape)} has rank {len(spec.shape)}, model expects rank "
                    f"{ranks} {list(mshape)}",
                )
            check_item(spec, shape, model_item, "shape")
            fixed = tuple(shape)
        elif spec.dims:
            if len(spec.dims) != len(model_item):
                raise input_error(
                    name,
                    f"dims has {len(spec.dims)} entries, the model's "
                    f"{'batch item ' if batched else ''}has {len(model_item)} {list(model_item)}",
                )
            for i, (text, have) in enumerate(zip(spec.dims, model_item, strict=True)):
                d = spec_dist(spec, "dims", text)
                if d.min() < 0:
                    raise input_error(name, f"dims[{i}] {text} can be negative (give min=0)")
                if have != -1 and not (d.is_fixed and d.max() == have):
                    raise input_error(
                        name, f"dim {i} is fixed at {have} by the model, plan says {text}"
                    )
        elif spec.shapes:
            for text in spec.shapes:
                ws = parse_weighted_shape(text)
                check_item(spec, ws.shape, model_item, f"shape {shape_text(ws.shape)}")
        elif spec.pixels:
            h, w, c = hw_axes(spec, model_item)
            for axis in (h, w):
                if model_item[axis] != -1:
                    raise input_error(
                        name,
                        f"pixels varies height and width, but the model fixes dim {axis} "
                        f"at {model_item[axis]}",
                    )
            if c is not None and model_item[c] == -1:
                raise input_error(name, "the channel dim is dynamic: use dims to give it")
            if spec_dist(spec, "pixels", spec.pixels).min() < 1:
                raise input_error(name, f"pixels {spec.pixels} can be below 1 (give min=1)")
            if spec.aspect and spec_dist(spec, "aspect", spec.aspect).min() <= 0:
                raise input_error(name, f"aspect {spec.aspect} must be > 0")
        elif spec.source == "files" and all(d >= 0 for d in model_item):
            fixed = tuple(model_item)  # images are resized to the model's fixed size
        elif spec.source in ("files", "json", "prompts"):
            pass  # shapes come with the data
        elif any(d < 0 for d in model_item):
            ex = "x".join("224" if d < 0 else str(d) for d in model_item)
            raise input_error(
                name,
                f"has dynamic dims {list(mshape)}: give a shape, e.g. --shape {name}={ex}, "
                f"or vary it, e.g. --shape {name}="
                + "x".join("200..800" if d < 0 else str(d) for d in model_item),
            )
        else:
            fixed = tuple(model_item)
        if spec.length:
            if datatype != "BYTES":
                raise input_error(name, f"length applies to BYTES inputs, this one is {datatype}")
            if spec_dist(spec, "length", spec.length).min() < 0:
                raise input_error(name, f"length {spec.length} can be negative (give min=0)")
        if spec.source == "constant" and datatype != "BYTES":
            try:
                np.asarray(spec.value, dtype=DTYPES[datatype])
            except (TypeError, ValueError, OverflowError):
                raise input_error(
                    name, f"constant {shown(spec.value)} is not a valid {datatype}"
                ) from None
        if spec.source == "prompts" and datatype != "BYTES":
            raise input_error(name, f"prompts fill a BYTES input, this one is {datatype}")
        if spec.source in ("json", "prompts") and spec.varies:
            raise input_error(name, "a JSON input-data file gives its own shapes")
        if fixed is not None and spec.source == "files":
            # Files take the shape as the size to resize images to (a drawn shape).
            spec = dataclasses.replace(spec, shape=(), dims=tuple(str(d) for d in fixed))
            fixed = None
        elif fixed is not None and spec.source in ("json", "prompts"):
            # JSON entries without a "shape" take this one (as perf_analyzer's --shape).
            spec = dataclasses.replace(spec, shape=fixed)
            fixed = None
        staged.append((spec, fixed))

    if len(full_batches) > 1:
        raise PlanError(
            f"inputs give different batch sizes in their shapes ({sorted(full_batches)})"
        )
    batch_text = plan.batch_size
    if not batched:
        if batch_text and not (
            parse_dist(batch_text).is_fixed and parse_dist(batch_text).max() == 1
        ):
            raise PlanError(
                f"plan.batch_size {batch_text}: model {shown(model_name)} does not batch "
                "(max_batch_size 0)"
            )
        batch_text = ""
    else:
        if not batch_text:
            batch_text = str(next(iter(full_batches))) if full_batches else str(default_batch)
        bd = parse_dist(batch_text)
        if bd.min() < 1:
            raise PlanError(f"plan.batch_size {batch_text}: batch sizes must be >= 1")
        if bd.max() > max_batch_size:
            raise PlanError(
                f"plan.batch_size {batch_text}: can reach {fmt_num(bd.max())}, over model "
                f"{shown(model_name)}'s max_batch_size {max_batch_size}"
            )
    all_fixed = all(f is not None for _, f in staged) and (
        not batched or parse_dist(batch_text).is_fixed
    )
    resolved: list[InputSpec] = []
    for spec, fixed in staged:
        if fixed is not None:
            if all_fixed:
                full = (int(parse_dist(batch_text).max()), *fixed) if batched else fixed
                spec = dataclasses.replace(spec, shape=tuple(full), dims=())
            else:
                spec = dataclasses.replace(spec, shape=(), dims=tuple(str(d) for d in fixed))
        resolved.append(spec)
    return dataclasses.replace(
        plan,
        inputs=tuple(resolved),
        max_batch_size=max_batch_size,
        batch_size="" if all_fixed else batch_text,
    )
