"""Stage 2 (coordinator): read files and perf_analyzer JSON into embedded items."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volley.dist import fmt_bytes
from volley.inputs.items import b64, count_bytes_elems, unb64
from volley.inputs.shapes import (
    DTYPES,
    check_item,
    element_count,
    input_error,
    item_dims,
    shape_text,
)
from volley.plan import DataItem, InputSpec, Plan, PlanError
from volley.shown import clipped, shown

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
RAW_EXTS = {".bin", ".raw", ".dat"}
#: Hard bound on what the coordinator embeds in the plan sent to agents.
MAX_EMBED_BYTES = 256 * 1024 * 1024


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
        raise input_error(spec.name, f"path {spec.path} is not a file or directory")
    usable = [(p, k) for p in candidates if (k := _file_kind(p, spec)) is not None]
    if not usable:
        what = (
            "images (.png, .jpg, ...), .npy arrays or raw .bin files"
            if spec.datatype != "BYTES"
            else "files"
        )
        raise input_error(spec.name, f"no {what} in {spec.path} ({len(candidates)} other files)")
    chosen = [usable[i] for i in _subset(len(usable), max_items, seed)]
    total = sum(p.stat().st_size for p, _ in chosen)
    limit = min(max_bytes, MAX_EMBED_BYTES)
    if total > limit:
        raise input_error(
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
            raise input_error(spec.name, f"{p}: {exc.strerror}") from None
        items.append(DataItem(kind=kind, data=b64(data), name=p.name))  # type: ignore[arg-type]
    return dataclasses.replace(spec, items=tuple(items))


def read_input_data(path: str) -> list[dict[str, Any]]:
    """Entries of a perf_analyzer `--input-data` JSON file (streams are flattened)."""
    try:
        doc = json.loads(Path(path).expanduser().read_text())
    except OSError as exc:
        raise PlanError(f"input data {path}: {exc.strerror}") from None
    except ValueError as exc:  # not JSON, not UTF-8, an integer too long to convert
        raise PlanError(f"input data {path}: not valid JSON ({clipped(str(exc), 120)})") from None
    except RecursionError:
        raise PlanError(f"input data {path}: nested too deep") from None
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
        data = unb64(content["b64"], where)
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
            n = count if count is not None else count_bytes_elems(data, where)
        else:
            n = len(data) // DTYPES[spec.datatype].itemsize
        fixed_n = element_count([d for d in model_item if d >= 0])
        if not dyn:
            shape = model_item
        elif len(dyn) == 1 and fixed_n > 0 and n % fixed_n == 0:
            shape = [n // fixed_n if d < 0 else d for d in model_item]
        else:
            raise PlanError(f'{where}: give a "shape" (the model\'s dims {model_item} are dynamic)')
    check_item(spec, shape, model_item, f"{where}: shape {shape_text(shape)}")
    n_el = element_count(shape)
    if spec.datatype == "BYTES":
        got = count if count is not None else count_bytes_elems(data, where)
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
            where = f"input data {path}: entry {i} input {shown(spec.name)}"
            if spec.name not in entries[i]:
                raise PlanError(f"input data {path}: entry {i} has no input {shown(spec.name)}")
            data, shape = _json_tensor(spec, entries[i][spec.name], batched, where)
            total += len(data)
            if total > min(max_bytes, MAX_EMBED_BYTES):
                raise PlanError(
                    f"input data {path}: the entries used total more than "
                    f"{fmt_bytes(min(max_bytes, MAX_EMBED_BYTES))} (input_pool.max_bytes)"
                )
            items.append(DataItem(kind="tensor", data=b64(data), shape=shape, name=f"entry {i}"))
        out.append(dataclasses.replace(spec, items=tuple(items)))
    return out


#: Prompts embedded at most (a prompts file's longer lines are refused).
MAX_PROMPT_BYTES = 1 << 20


def read_prompts(path: str) -> list[str]:
    """The prompts of a file: JSONL (each line an object with "text", else "prompt") when
    its first non-blank line is a JSON object, else plain text (one prompt a line)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"prompts {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PlanError(f"prompts {path}: not UTF-8 text") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise PlanError(f"prompts {path}: no prompts in the file")
    out: list[str] = []
    jsonl = lines[0][1].lstrip().startswith("{")
    for n, line in lines:
        prompt: object = line
        if jsonl:
            try:
                doc = json.loads(line)
            except (ValueError, RecursionError):
                raise PlanError(f"prompts {path}: line {n} is not a JSON object") from None
            if not isinstance(doc, dict):
                raise PlanError(f"prompts {path}: line {n} is not a JSON object")
            prompt = doc.get("text", doc.get("prompt"))
            if not isinstance(prompt, str):
                raise PlanError(f'prompts {path}: line {n} has no "text" or "prompt" string')
        assert isinstance(prompt, str)
        if len(prompt.encode()) > MAX_PROMPT_BYTES:
            raise PlanError(f"prompts {path}: line {n} is over {fmt_bytes(MAX_PROMPT_BYTES)}")
        out.append(prompt)
    return out


def load_prompts(
    spec: InputSpec, seed: int, batched: bool, max_items: int, max_bytes: int
) -> InputSpec:
    """Embed a prompts file's prompts (a subset of `max_items`) for a BYTES input."""
    prompts = read_prompts(spec.path)
    chosen = _subset(len(prompts), max_items, seed)
    items, total = [], 0
    limit = min(max_bytes, MAX_EMBED_BYTES)
    for i in chosen:
        where = f"prompts {spec.path}: line {i + 1} input {shown(spec.name)}"
        data, shape = _json_tensor(spec, [prompts[i]], batched, where)
        total += len(data)
        if total > limit:
            raise PlanError(
                f"prompts {spec.path}: the prompts used total more than {fmt_bytes(limit)} "
                "(input_pool.max_bytes)"
            )
        items.append(DataItem(kind="tensor", data=b64(data), shape=shape, name=f"prompt {i + 1}"))
    return dataclasses.replace(spec, items=tuple(items))


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
        elif spec.source == "prompts":
            inputs[j] = load_prompts(spec, plan.seed, batched, pool.payloads, pool.max_bytes)
        elif spec.source == "json":
            json_paths.setdefault(spec.path, []).append(j)
    for path, idx in json_paths.items():
        loaded = load_json(
            [inputs[j] for j in idx], path, plan.seed, batched, pool.payloads, pool.max_bytes
        )
        for j, spec in zip(idx, loaded, strict=True):
            inputs[j] = spec
    return dataclasses.replace(plan, inputs=tuple(inputs))
