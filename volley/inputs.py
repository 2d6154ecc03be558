"""Realistic inputs: resolve input specs against the model, read data sources, draw payloads.

Three stages, all deterministic from the plan (seed included), so every worker of
every agent builds the same pool and request `i` carries the same payload whatever
the number of agents:

1. `resolve_specs` (preflight, coordinator): names, datatypes and dims come from the
   model's metadata; the user's spec only says what to vary. A spec that does not fit
   the model is a PlanError naming the input.
2. `embed_sources` (coordinator): files and JSON input-data files are read once and
   embedded in the plan (`InputSpec.items`); agents never read files.
3. `draw_payloads` + `make_tensors` (pool builder, every worker): the distributions
   are sampled into N payload draws -- exactly weighted when every varying quantity
   is a discrete choice and the combinations fit in the pool, else stratified (Latin
   hypercube: each distribution's range is covered evenly by the N draws) -- and each
   draw becomes tensors. The pool is bounded in memory (`input_pool.max_bytes`).

The hot path never comes here: `volley.request` serializes the tensors once and
`RequestPool.pick` maps a request's global index to a payload by a hash.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from volley.dist import Dist, DistError, fmt_bytes, parse_dist, parse_weighted_shape
from volley.plan import MAX_INPUT_BYTES, DataItem, InputSpec, Plan, PlanError

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

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
RAW_EXTS = {".bin", ".raw", ".dat"}
#: Hard bound on what the coordinator embeds in the plan sent to agents.
MAX_EMBED_BYTES = 256 * 1024 * 1024
DEFAULT_LENGTH = 16
_CHANNELS_MODE = {1: "L", 3: "RGB", 4: "RGBA"}


def _err(name: str, msg: str) -> PlanError:
    return PlanError(f"input {name!r}: {msg}")


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def element_count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _dist(spec: InputSpec, key: str, text: str) -> Dist:
    try:
        return parse_dist(text)
    except DistError as exc:  # plans are validated when parsed; this is a safety net
        raise _err(spec.name, f"{key}: {exc}") from None


# ---- layout of images ----------------------------------------------------------------


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
    raise _err(
        spec.name,
        f"cannot place height and width in dims {list(item)} (layout {layout or '?'}); "
        "images need 2 (HW) or 3 (HWC/CHW) dims",
    )


# ---- stage 1: resolve against the model ---------------------------------------------------


def _check_item(spec: InputSpec, shape: Sequence[int], model: Sequence[int], what: str) -> None:
    if len(shape) != len(model):
        raise _err(
            spec.name,
            f"{what} {shape_text(shape)} has rank {len(shape)}, model expects rank "
            f"{len(model)} {list(model)}",
        )
    for i, (want, have) in enumerate(zip(shape, model, strict=True)):
        if have != -1 and want != have:
            raise _err(
                spec.name, f"{what}: dim {i} is {want}, model expects {have} (dims {list(model)})"
            )


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
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise PlanError(
            f"input {unknown[0]!r} is not an input of model {model_name!r} "
            f"(its inputs: {', '.join(sorted(names))})"
        )
    batched = max_batch_size > 0
    full_batches: set[int] = set()
    staged: list[tuple[InputSpec, tuple[int, ...] | None]] = []  # (spec, fixed item dims)
    for name, datatype, mshape in model_inputs:
        spec = given.get(name, InputSpec(name=name))
        if spec.datatype and spec.datatype != datatype:
            raise _err(name, f"plan says {spec.datatype}, model expects {datatype}")
        if datatype not in DTYPES and datatype != "BYTES":
            raise _err(name, f"datatype {datatype} is not supported")
        spec = dataclasses.replace(spec, datatype=datatype, model_dims=tuple(mshape))
        model_item = item_dims(spec, batched)
        fixed: tuple[int, ...] | None = None
        if spec.shape:
            shape = spec.shape
            if batched and len(shape) == len(mshape):
                if plan.batch_size:
                    raise _err(
                        name,
                        f"shape {shape_text(shape)} gives a batch dim and plan.batch_size is "
                        "set: leave the batch dim out of the shape",
                    )
                if shape[0] > max_batch_size:
                    raise _err(
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
                raise _err(
                    name,
                    f"shape {list(spec.shape)} has rank {len(spec.shape)}, model expects rank "
                    f"{ranks} {list(mshape)}",
                )
            _check_item(spec, shape, model_item, "shape")
            fixed = tuple(shape)
        elif spec.dims:
            if len(spec.dims) != len(model_item):
                raise _err(
                    name,
                    f"dims has {len(spec.dims)} entries, the model's "
                    f"{'batch item ' if batched else ''}has {len(model_item)} {list(model_item)}",
                )
            for i, (text, have) in enumerate(zip(spec.dims, model_item, strict=True)):
                d = _dist(spec, "dims", text)
                if d.min() < 0:
                    raise _err(name, f"dims[{i}] {text} can be negative (give min=0)")
                if have != -1 and not (d.is_fixed and d.max() == have):
                    raise _err(name, f"dim {i} is fixed at {have} by the model, plan says {text}")
        elif spec.shapes:
            for text in spec.shapes:
                ws = parse_weighted_shape(text)
                _check_item(spec, ws.shape, model_item, f"shape {shape_text(ws.shape)}")
        elif spec.pixels:
            h, w, c = hw_axes(spec, model_item)
            for axis in (h, w):
                if model_item[axis] != -1:
                    raise _err(
                        name,
                        f"pixels varies height and width, but the model fixes dim {axis} "
                        f"at {model_item[axis]}",
                    )
            if c is not None and model_item[c] == -1:
                raise _err(name, "the channel dim is dynamic: use dims to give it")
            if _dist(spec, "pixels", spec.pixels).min() < 1:
                raise _err(name, f"pixels {spec.pixels} can be below 1 (give min=1)")
            if spec.aspect and _dist(spec, "aspect", spec.aspect).min() <= 0:
                raise _err(name, f"aspect {spec.aspect} must be > 0")
        elif spec.source == "files" and all(d >= 0 for d in model_item):
            fixed = tuple(model_item)  # images are resized to the model's fixed size
        elif spec.source in ("files", "json"):
            pass  # shapes come with the data
        elif any(d < 0 for d in model_item):
            ex = "x".join("224" if d < 0 else str(d) for d in model_item)
            raise _err(
                name,
                f"has dynamic dims {list(mshape)}: give a shape, e.g. --shape {name}={ex}, "
                f"or vary it, e.g. --shape {name}="
                + "x".join("200..800" if d < 0 else str(d) for d in model_item),
            )
        else:
            fixed = tuple(model_item)
        if spec.length:
            if datatype != "BYTES":
                raise _err(name, f"length applies to BYTES inputs, this one is {datatype}")
            if _dist(spec, "length", spec.length).min() < 0:
                raise _err(name, f"length {spec.length} can be negative (give min=0)")
        if spec.source == "constant" and datatype != "BYTES":
            try:
                np.asarray(spec.value, dtype=DTYPES[datatype])
            except (TypeError, ValueError, OverflowError):
                raise _err(name, f"constant {spec.value!r} is not a valid {datatype}") from None
        if spec.source == "json" and spec.varies:
            raise _err(name, "a JSON input-data file gives its own shapes")
        if fixed is not None and spec.source == "files":
            # Files take the shape as the size to resize images to (a drawn shape).
            spec = dataclasses.replace(spec, shape=(), dims=tuple(str(d) for d in fixed))
            fixed = None
        elif fixed is not None and spec.source == "json":
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
                f"plan.batch_size {batch_text}: model {model_name!r} does not batch "
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
                f"{model_name!r}'s max_batch_size {max_batch_size}"
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


def fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


# ---- stage 2: data sources (coordinator) -------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PlanError(f"{where}: not valid base64") from None


def _subset(n_total: int, n_max: int, seed: int) -> list[int]:
    if n_total <= n_max:
        return list(range(n_total))
    rng = np.random.default_rng([seed, 0xF11E5])
    return sorted(int(i) for i in rng.choice(n_total, size=n_max, replace=False))


def _file_kind(path: Path, spec: InputSpec) -> str | None:
    ext = path.suffix.lower()
    if spec.datatype == "BYTES":
        return "raw"
    if ext in IMAGE_EXTS:
        return "image"
    if ext == ".npy":
        return "npy"
    if ext in RAW_EXTS or path.name == spec.name:
        return "raw"
    return None


def load_files(spec: InputSpec, seed: int, max_items: int, max_bytes: int) -> InputSpec:
    """Read a directory (or one file) into embedded items."""
    root = Path(spec.path).expanduser()
    if root.is_file():
        candidates = [root]
    elif root.is_dir():
        candidates = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        raise _err(spec.name, f"path {spec.path} is not a file or directory")
    usable = [(p, k) for p in candidates if (k := _file_kind(p, spec)) is not None]
    if not usable:
        what = (
            "images (.png, .jpg, ...), .npy arrays or raw .bin files"
            if spec.datatype != "BYTES"
            else "files"
        )
        raise _err(spec.name, f"no {what} in {spec.path} ({len(candidates)} other files)")
    chosen = [usable[i] for i in _subset(len(usable), max_items, seed)]
    total = sum(p.stat().st_size for p, _ in chosen)
    limit = min(max_bytes, MAX_EMBED_BYTES)
    if total > limit:
        raise _err(
            spec.name,
            f"the {len(chosen)} files used from {spec.path} total {fmt_bytes(total)}, over "
            f"the {fmt_bytes(limit)} sent to agents (input_pool.max_bytes); use fewer "
            "(input_pool.payloads) or smaller files",
        )
    items = []
    for p, kind in chosen:
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise _err(spec.name, f"{p}: {exc.strerror}") from None
        items.append(DataItem(kind=kind, data=_b64(data), name=p.name))  # type: ignore[arg-type]
    return dataclasses.replace(spec, items=tuple(items))


def read_input_data(path: str) -> list[dict[str, Any]]:
    """Entries of a perf_analyzer `--input-data` JSON file (streams are flattened)."""
    try:
        doc = json.loads(Path(path).expanduser().read_text())
    except OSError as exc:
        raise PlanError(f"input data {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"input data {path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise PlanError(f'input data {path}: expected {{"data": [...]}} (perf_analyzer layout)')
    entries: list[dict[str, Any]] = []
    for i, e in enumerate(doc["data"]):
        group = e if isinstance(e, list) else [e]
        for g in group:
            if not isinstance(g, dict):
                raise PlanError(f"input data {path}: entry {i} is not an object")
            entries.append(g)
    if not entries:
        raise PlanError(f"input data {path}: no entries in data")
    return entries


def json_input_names(path: str) -> list[str]:
    """The input names a perf_analyzer JSON file gives (for `--input-data`)."""
    names: list[str] = []
    for e in read_input_data(path):
        for k in e:
            if k not in names:
                names.append(k)
    return names


def _flatten(v: object) -> list[Any]:
    if isinstance(v, list):
        out: list[Any] = []
        for x in v:
            out.extend(_flatten(x))
        return out
    return [v]


def _json_tensor(
    spec: InputSpec, value: object, batched: bool, where: str
) -> tuple[bytes, tuple[int, ...]]:
    shape: list[int] | None = None
    content = value
    if isinstance(value, dict) and "content" in value:
        content = value["content"]
        if "shape" in value:
            raw_shape = value["shape"]
            if not isinstance(raw_shape, list) or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in raw_shape
            ):
                raise PlanError(f"{where}: shape must be a list of non-negative integers")
            shape = list(raw_shape)
    elif isinstance(value, dict) and set(value) - {"b64"}:
        raise PlanError(f'{where}: expected a list, {{"b64": ...}} or {{"content": ...}}')
    nested_shape: list[int] | None = None
    if isinstance(content, dict):
        if set(content) != {"b64"} or not isinstance(content["b64"], str):
            raise PlanError(f'{where}: expected {{"b64": "..."}}')
        data = _unb64(content["b64"], where)
        count = None
    elif isinstance(content, list):
        flat = _flatten(content)
        arr = np.asarray(content, dtype=object)
        if arr.ndim > 1:
            nested_shape = list(arr.shape)
        count = len(flat)
        if spec.datatype == "BYTES":
            elems = [x.encode() if isinstance(x, str) else None for x in flat]
            if any(e is None for e in elems):
                raise PlanError(f"{where}: BYTES content must be strings")
            data = b"".join(len(e).to_bytes(4, "little") + e for e in elems if e is not None)
        else:
            dt = DTYPES[spec.datatype]
            if any(isinstance(x, str | dict | list) or x is None for x in flat):
                raise PlanError(f"{where}: {spec.datatype} content must be numbers")
            wide = np.asarray(flat, dtype=np.float64 if dt.kind in "fb" else np.int64)
            if dt.kind in "iu":
                info = np.iinfo(dt.type)  # type: ignore[type-var]
                if wide.size and (wide.min() < info.min or wide.max() > info.max):
                    raise PlanError(f"{where}: values out of range for {spec.datatype}")
            data = wide.astype(dt).tobytes()
    else:
        raise PlanError(f'{where}: expected a list, {{"b64": ...}} or {{"content": ...}}')
    model_item = list(item_dims(spec, batched))
    if shape is None:
        shape = nested_shape if nested_shape and len(nested_shape) == len(model_item) else None
    if shape is None and spec.shape:
        shape = list(spec.shape)  # the plan's shape is the default (perf_analyzer's --shape)
    if shape is None:
        dyn = [i for i, d in enumerate(model_item) if d < 0]
        if spec.datatype == "BYTES":
            n = count if count is not None else _count_bytes_elems(data, where)
        else:
            n = len(data) // DTYPES[spec.datatype].itemsize
        fixed_n = element_count([d for d in model_item if d >= 0])
        if not dyn:
            shape = model_item
        elif len(dyn) == 1 and fixed_n > 0 and n % fixed_n == 0:
            shape = [n // fixed_n if d < 0 else d for d in model_item]
        else:
            raise PlanError(f'{where}: give a "shape" (the model\'s dims {model_item} are dynamic)')
    _check_item(spec, shape, model_item, f"{where}: shape {shape_text(shape)}")
    n_el = element_count(shape)
    if spec.datatype == "BYTES":
        got = count if count is not None else _count_bytes_elems(data, where)
        if got != n_el:
            raise PlanError(f"{where}: {got} strings for shape {shape_text(shape)}")
    else:
        want = n_el * DTYPES[spec.datatype].itemsize
        if len(data) != want:
            raise PlanError(
                f"{where}: {len(data)} bytes of data, shape {shape_text(shape)} "
                f"{spec.datatype} needs {want}"
            )
    return data, tuple(shape)


def _count_bytes_elems(data: bytes, where: str) -> int:
    n, off = 0, 0
    while off < len(data):
        if off + 4 > len(data):
            raise PlanError(f"{where}: BYTES data is not 4-byte-length-prefixed elements")
        off += 4 + int.from_bytes(data[off : off + 4], "little")
        n += 1
    if off != len(data):
        raise PlanError(f"{where}: BYTES data is not 4-byte-length-prefixed elements")
    return n


def load_json(
    specs: Sequence[InputSpec], path: str, seed: int, batched: bool, max_items: int, max_bytes: int
) -> list[InputSpec]:
    """Embed the entries of a perf_analyzer JSON file for the inputs that read it."""
    entries = read_input_data(path)
    chosen = _subset(len(entries), max_items, seed)
    out = []
    total = 0
    for spec in specs:
        items = []
        for i in chosen:
            where = f"input data {path}: entry {i} input {spec.name!r}"
            if spec.name not in entries[i]:
                raise PlanError(f"input data {path}: entry {i} has no input {spec.name!r}")
            data, shape = _json_tensor(spec, entries[i][spec.name], batched, where)
            total += len(data)
            if total > min(max_bytes, MAX_EMBED_BYTES):
                raise PlanError(
                    f"input data {path}: the entries used total more than "
                    f"{fmt_bytes(min(max_bytes, MAX_EMBED_BYTES))} (input_pool.max_bytes)"
                )
            items.append(DataItem(kind="tensor", data=_b64(data), shape=shape, name=f"entry {i}"))
        out.append(dataclasses.replace(spec, items=tuple(items)))
    return out


def embed_sources(plan: Plan) -> Plan:
    """Read every files/json source of a resolved plan into embedded items (coordinator)."""
    pool = plan.input_pool
    batched = plan.max_batch_size > 0
    inputs = list(plan.inputs)
    json_paths: dict[str, list[int]] = {}
    for j, spec in enumerate(inputs):
        if spec.items or not spec.path:
            continue
        if spec.source == "files":
            inputs[j] = load_files(spec, plan.seed, pool.payloads, pool.max_bytes)
        elif spec.source == "json":
            json_paths.setdefault(spec.path, []).append(j)
    for path, idx in json_paths.items():
        loaded = load_json(
            [inputs[j] for j in idx], path, plan.seed, batched, pool.payloads, pool.max_bytes
        )
        for j, spec in zip(idx, loaded, strict=True):
            inputs[j] = spec
    return dataclasses.replace(plan, inputs=tuple(inputs))


# ---- decoding embedded items (every worker) -------------------------------------------------


def _open_image(data: bytes, where: str, load: bool = True) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        if load:
            img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PlanError(f"{where}: not a readable image ({exc})") from None
    return img


def _image_channels(spec: InputSpec, batched: bool, native: int) -> int:
    item = item_dims(spec, batched)
    _, _, c = hw_axes(spec, item) if len(item) in (2, 3) else (0, 0, None)
    if c is None:
        return 1 if len(item) == 2 else native
    return item[c] if item[c] > 0 else native


@dataclass(frozen=True)
class ItemInfo:
    shape: tuple[int, ...]  #: item shape (as sent, layout applied)
    elements: int  #: BYTES: elements; else product of shape
    nbytes: int  #: bytes of tensor data for one item


class ItemCache:
    """Item shapes and sizes, found once per item (image headers are read, not decoded)."""

    def __init__(self, spec: InputSpec, batched: bool) -> None:
        self.spec = spec
        self.batched = batched
        self._info: dict[int, ItemInfo] = {}

    def where(self, k: int) -> str:
        return f"input {self.spec.name!r} {self.spec.items[k].name or f'item {k}'}"

    def info(self, k: int) -> ItemInfo:
        got = self._info.get(k)
        if got is None:
            got = self._info[k] = self._find(k)
        return got

    def _find(self, k: int) -> ItemInfo:
        spec, it = self.spec, self.spec.items[k]
        where = self.where(k)
        if spec.datatype == "BYTES":
            data = _unb64(it.data, where)
            if it.kind == "tensor":
                n = _count_bytes_elems(data, where)
                return ItemInfo(it.shape, n, len(data))
            ones = tuple(1 for _ in item_dims(spec, self.batched))
            return ItemInfo(ones, 1, len(data) + 4)
        itemsize = DTYPES[spec.datatype].itemsize
        if it.kind == "tensor":
            return ItemInfo(it.shape, element_count(it.shape), element_count(it.shape) * itemsize)
        if it.kind == "image":
            # The header gives the size; the pixels are decoded only when the pool is built.
            img = _open_image(_unb64(it.data, where), where, load=False)
            model_item = item_dims(spec, self.batched)
            native = len(img.getbands())
            c = _image_channels(spec, self.batched, native if native in (1, 3, 4) else 3)
            if len(model_item) == 2:
                shape: tuple[int, ...] = (img.height, img.width)
            elif hw_axes(spec, model_item)[2] == 0:
                shape = (c, img.height, img.width)
            else:
                shape = (img.height, img.width, c)
            _check_item(spec, shape, model_item, f"{where}: shape {shape_text(shape)}")
            return ItemInfo(shape, element_count(shape), element_count(shape) * itemsize)
        arr = self.array(k)
        return ItemInfo(tuple(arr.shape), int(arr.size), int(arr.size) * itemsize)

    def array(self, k: int, resize_hw: tuple[int, int] | None = None) -> npt.NDArray[Any]:
        """Decode item k to the input's dtype (images: layout and channels as the model's)."""
        spec, it = self.spec, self.spec.items[k]
        where = self.where(k)
        dt = DTYPES[spec.datatype]
        data = _unb64(it.data, where)
        model_item = item_dims(spec, self.batched)
        if it.kind == "image":
            img = _open_image(data, where)
            native = len(img.getbands())
            c = _image_channels(spec, self.batched, native if native in (1, 3, 4) else 3)
            mode = _CHANNELS_MODE.get(c)
            if mode is None:
                raise PlanError(f"{where}: the model wants {c} channels; images have 1, 3 or 4")
            if img.mode != mode:
                img = img.convert(mode)
            if resize_hw is not None and (img.height, img.width) != resize_hw:
                from PIL import Image

                img = img.resize((resize_hw[1], resize_hw[0]), Image.Resampling.BILINEAR)
            arr: npt.NDArray[Any] = np.asarray(img)
            if arr.ndim == 2 and len(model_item) == 3:
                arr = arr[:, :, None]
            if len(model_item) == 3 and hw_axes(spec, model_item)[2] == 0:
                arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
            elif len(model_item) == 2 and arr.ndim == 3:
                arr = arr[:, :, 0]
            out = arr.astype(dt)
        elif it.kind == "npy":
            try:
                loaded = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise PlanError(f"{where}: not a readable .npy file ({exc})") from None
            if not np.can_cast(loaded.dtype, dt, "same_kind"):
                raise PlanError(
                    f"{where}: array of {loaded.dtype} cannot be sent as {spec.datatype}"
                )
            out = loaded.astype(dt)
        elif it.kind in ("raw", "tensor"):
            if len(data) % dt.itemsize:
                raise PlanError(
                    f"{where}: {len(data)} bytes is not a whole number of {spec.datatype}"
                )
            flat = np.frombuffer(data, dtype=dt)
            shape = list(it.shape) if it.shape else _infer_shape(model_item, flat.size, where)
            out = flat.reshape(shape)
        else:
            raise PlanError(f"{where}: unknown item kind {it.kind!r}")
        _check_item(spec, out.shape, model_item, f"{where}: shape {shape_text(out.shape)}")
        return out

    def element(self, k: int) -> bytes:
        """BYTES inputs: the item as serialized elements (length-prefixed)."""
        it = self.spec.items[k]
        data = _unb64(it.data, self.where(k))
        if it.kind == "tensor":
            return data
        return len(data).to_bytes(4, "little") + data


def _infer_shape(model_item: Sequence[int], n: int, where: str) -> list[int]:
    dyn = [i for i, d in enumerate(model_item) if d < 0]
    fixed_n = element_count([d for d in model_item if d >= 0])
    if not dyn:
        if fixed_n != n:
            raise PlanError(
                f"{where}: {n} values, the model's dims {list(model_item)} need {fixed_n}"
            )
        return list(model_item)
    if len(dyn) == 1 and fixed_n > 0 and n % fixed_n == 0:
        return [n // fixed_n if d < 0 else d for d in model_item]
    raise PlanError(f"{where}: raw data cannot fill dims {list(model_item)}; use .npy files")


# ---- stage 3: draws ------------------------------------------------------------------


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
            d = _dist(spec, "dims", text)
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
                if text and not (d := _dist(spec, key, text)).is_fixed:
                    out.append(Factor((j, key), d))
        if spec.length and not (d := _dist(spec, "length", spec.length)).is_fixed:
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


def _round_dim(v: float) -> int:
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
            _round_dim(values.get((j, "dim", i), _dist(spec, "dims", t).quantile(0.5)))
            for i, t in enumerate(spec.dims)
        )
    elif spec.shapes:
        k = int(values.get((j, "shape"), 0))
        item_shape = parse_weighted_shape(spec.shapes[k]).shape
    elif spec.pixels:
        px = values.get((j, "pixels"), _dist(spec, "pixels", spec.pixels).quantile(0.5))
        ar = (
            values.get((j, "aspect"), _dist(spec, "aspect", spec.aspect).quantile(0.5))
            if (spec.aspect)
            else 1.0
        )
        h = max(1, _round_dim(math.sqrt(px / ar)))
        w = max(1, _round_dim(math.sqrt(px * ar)))
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
            raise _err(
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
    return _round_dim(values.get((j, "length"), _dist(spec, "length", spec.length).quantile(0.5)))


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
            batch = max(1, _round_dim(values.get(("batch",), base_batch)))
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


# ---- tensors -----------------------------------------------------------------------


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
                raise _err(spec.name, f"items of different shapes cannot share a batch ({names})")
            return b"".join(cache.element(k) for k in ks)
        arrays = [cache.array(k, d.resize) for k in ks]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            names = ", ".join(
                f"{cache.where(k)} {shape_text(a.shape)}" for k, a in zip(ks, arrays, strict=True)
            )
            raise _err(
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
        raise _err(
            spec.name,
            f"shape {shape_text(d.shape)} is {nbytes} bytes, over the {MAX_INPUT_BYTES}-byte limit",
        )
    if spec.source == "zeros":
        return bytes(nbytes)
    if spec.source == "constant":
        try:
            return np.full(d.shape, spec.value if spec.value is not None else 0, dtype=dt).tobytes()
        except (TypeError, ValueError, OverflowError):
            raise _err(
                spec.name, f"constant {spec.value!r} is not a valid {spec.datatype}"
            ) from None
    return _random_array(dt, d.shape, rng).tobytes()


# ---- bounds for preflight --------------------------------------------------------------


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
            bound = _dist(spec, "dims", t).max()
            if math.isfinite(bound):
                most[i] = max(most[i], float(_round_dim(bound)))
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
        bound = _dist(spec, "pixels", spec.pixels).max()
        if math.isfinite(bound) and bound > best:
            best, text = bound, f"up to {fmt_num(bound)} pixels"
    elif spec.dims or spec.shapes:
        if spec.shapes:
            for t in spec.shapes:
                ws = parse_weighted_shape(t).shape
                if ws[ha] * ws[wa] > best:
                    best, text = float(ws[ha] * ws[wa]), f"{ws[ha]}x{ws[wa]}"
        else:
            mh = _dist(spec, "dims", spec.dims[ha]).max()
            mw = _dist(spec, "dims", spec.dims[wa]).max()
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
        bound = _dist(spec, "pixels", spec.pixels).max() * channels * itemsize * max_batch
        shown = f"{fmt_num(_dist(spec, 'pixels', spec.pixels).max())} pixels x {channels}"
    else:
        most = max_item_shape(plan, j, draws)
        bound = float(math.prod(most)) * itemsize * max_batch
        shown = "x".join(fmt_num(x) for x in most)
    if batched:
        shown = f"{fmt_num(max_batch)}x{shown}"
    if math.isfinite(bound) and bound > best:
        best, text = bound, shown
    return best, text


def is_image_like(spec: InputSpec, batched: bool) -> bool:
    item = item_dims(spec, batched)
    if spec.datatype == "BYTES" or len(item) not in (2, 3):
        return False
    try:
        hw_axes(spec, item)
    except PlanError:
        return False
    return True


def iter_tensors(plan: Plan, draws: Sequence[Draw]) -> Iterator[list[Tensor]]:
    caches = make_caches(plan)
    for p, d in enumerate(draws):
        yield make_tensors(plan, d, p, caches)
