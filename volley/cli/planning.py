"""From `volley run` / `volley sweep` options to a Plan: stages, traces, inputs, target."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Literal, cast

from volley.plan import (
    Plan,
    PlanError,
    load_plan_yaml,
    parse_duration,
    plan_from_dict,
)
from volley.shown import shown

TraceFormat = Literal["timestamps", "gaps"]
TraceUnit = Literal["s", "ms", "us", "ns"]


def read_text_file(path: Path, what: str) -> str:
    """A plan, trace or sweep file's text; PlanError when it cannot be read or is not
    UTF-8 text (a binary file, say), naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"{what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(
            f"{what} {path}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})"
        ) from None


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def parse_stages(text: str, key: str) -> list[dict[str, Any]]:
    """'10s:100,20s:400' -> [{duration: 10s, rate: 100}, ...]."""
    out: list[dict[str, Any]] = []
    for part in text.split(","):
        dur, sep, target = part.strip().partition(":")
        if not sep:
            raise PlanError(f"--stages: expected DURATION:TARGET items, got {shown(part.strip())}")
        try:
            value = float(target)
        except ValueError:
            raise PlanError(f"--stages: {shown(target)} is not a number") from None
        out.append({"duration": parse_duration(dur, "--stages duration"), key: value})
    return out


def resolve_trace(data: dict[str, Any]) -> None:
    """Read a plan's trace file into load.trace.times_ns (agents never read files)."""
    from volley.schedule import parse_trace

    trace = (data.get("load") or {}).get("trace")
    if not isinstance(trace, dict) or not trace.get("file") or trace.get("times_ns"):
        return
    path = Path(str(trace["file"]))
    fmt, unit, speed = (
        trace.get("format", "timestamps"),
        trace.get("unit", "s"),
        trace.get("speed", 1.0),
    )
    if fmt not in ("timestamps", "gaps"):
        raise PlanError(f"load.trace.format: must be timestamps or gaps, got {shown(fmt)}")
    if unit not in ("s", "ms", "us", "ns"):
        raise PlanError(f"load.trace.unit: must be one of s, ms, us, ns, got {shown(unit)}")
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0 < speed < 1e300:
        raise PlanError(f"load.trace.speed: expected a finite number > 0, got {shown(speed)}")
    text = read_text_file(path, "trace file")
    try:
        times = parse_trace(text, cast(TraceFormat, fmt), cast(TraceUnit, unit), float(speed))
    except ValueError as exc:
        raise PlanError(f"trace file {path}: {exc}") from None
    if times.size == 0:
        raise PlanError(f"trace file {path}: no arrivals")
    trace["times_ns"] = times.tolist()


VARY_FIELDS = ("dims", "shapes", "pixels", "aspect", "layout", "length")


def _apply_input_options(
    specs: dict[str, dict[str, Any]],
    inputs: dict[str, str],
    shapes: dict[str, str],
    vary: dict[str, str],
    input_data: str | None,
) -> None:
    """--input, --shape, --vary and --input-data onto the plan's input specs (options win)."""
    from volley.dist import DistError, parse_dims_pattern, parse_dist
    from volley.inputs import json_input_names

    if input_data:
        for name in json_input_names(input_data):
            spec = specs.setdefault(name, {"name": name})
            spec.update(source="json", path=input_data)
    for name, value in inputs.items():
        spec = specs.setdefault(name, {"name": name})
        if value in ("random", "zeros"):
            spec["source"] = value
        elif value.startswith("@"):
            path = value[1:]
            spec["source"] = "json" if path.lower().endswith(".json") else "files"
            spec["path"] = path
        else:
            spec["source"] = "constant"
            spec["value"] = _number(value)
    for name, shape in shapes.items():
        spec = specs.setdefault(name, {"name": name})
        for k in ("dims", "shapes", "pixels", "aspect", "shape"):
            spec.pop(k, None)
        try:
            dims = parse_dims_pattern(shape)
        except DistError as exc:
            raise PlanError(f"--shape {name}={shape}: {exc}") from None
        if all(parse_dist(d).kind == "fixed" for d in dims):
            try:
                spec["shape"] = [int(d) for d in dims]
            except ValueError:
                raise PlanError(f"--shape {name}={shape}: dims must be integers") from None
        else:
            spec["dims"] = dims
    for key, value in vary.items():
        name, dot, what = key.rpartition(".")
        if not dot or not name or what not in VARY_FIELDS:
            raise PlanError(
                f"--vary {key}={value}: expected NAME.KEY=VALUE with KEY one of "
                f"{', '.join(VARY_FIELDS)}"
            )
        spec = specs.setdefault(name, {"name": name})
        if what in ("dims", "shapes", "pixels"):
            for k in ("dims", "shapes", "pixels", "aspect", "shape"):
                spec.pop(k, None)
        spec[what] = [v for v in value.split(",") if v] if what == "shapes" else value


def build_plan(
    plan_file: Path | None,
    overrides: dict[str, Any],
    load_overrides: dict[str, Any],
    inputs: dict[str, str],
    shapes: dict[str, str],
    vary: dict[str, str] | None = None,
    input_data: str | None = None,
    sequence: dict[str, Any] | None = None,
    max_tokens: str | None = None,
    prompts: str | None = None,
    prompt_input: str | None = None,
) -> Plan:
    """Merge a plan file with command-line options (options win) and validate.

    A plan that names no seed, in the file or the options, gets a random one; it is in the
    resolved plan, so the run can be repeated. An explicit seed (0 included) is kept.
    """
    data: dict[str, Any] = {}
    if plan_file is not None:
        data = load_plan_yaml(read_text_file(plan_file, "plan file"))
    for k, v in overrides.items():
        if v is not None:
            data[k] = v
    if "seed" not in data:
        data["seed"] = secrets.randbits(32)
    if not isinstance(data.get("load") or {}, dict):
        raise PlanError("load: expected a mapping")
    if not isinstance(data.get("inputs") or [], list):
        raise PlanError("inputs: expected a list")
    load = dict(data.get("load") or {})
    for k, v in load_overrides.items():
        if v is not None:
            load[k] = v
    if "concurrency" in load_overrides and load_overrides["concurrency"] is not None:
        load["mode"] = "closed"
    elif "rate" in load_overrides and load_overrides["rate"] is not None:
        load["mode"] = "open"
    data["load"] = load
    specs: dict[str, dict[str, Any]] = {}
    for i in data.get("inputs") or []:
        if isinstance(i, dict) and isinstance(i.get("name"), str):
            specs[i["name"]] = dict(i)
    _apply_input_options(specs, inputs, shapes, vary or {}, input_data)
    if prompt_input and not prompts:
        raise PlanError("--prompt-input needs --prompts FILE")
    if prompts:
        # "" = the model's only BYTES input (preflight names it)
        from volley.inputs.sources import read_prompts

        read_prompts(prompts)  # a bad file fails here, before any server is asked
        name = prompt_input or ""
        specs.setdefault(name, {"name": name}).update(source="prompts", path=prompts)
    if max_tokens is not None:
        stream = data.get("stream") or {}
        if not isinstance(stream, dict) or not isinstance(stream.get("parameters") or {}, dict):
            raise PlanError("stream: expected a mapping with a parameters mapping")
        value: Any = max_tokens.strip()
        if value.lstrip("-").isdigit():
            value = int(value)
        elif "(" not in value and ".." not in value and "|" not in value:
            raise PlanError(f"--max-tokens {max_tokens}: expected an integer or a distribution")
        data["stream"] = {
            **stream,
            "parameters": {**(stream.get("parameters") or {}), "max_tokens": value},
        }
    if specs:
        data["inputs"] = list(specs.values())
    resolve_trace(data)
    given = {k: v for k, v in (sequence or {}).items() if v is not None}
    if given:  # sequence options win over the file's plan.sequence, key by key
        base = data.get("sequence")
        data["sequence"] = {**(base if isinstance(base, dict) else {}), **given}
    return plan_from_dict(data)


def parse_id_range(text: str) -> list[int]:
    """--sequence-id-range LO:HI (or LO..HI): correlation IDs [LO, HI)."""
    parts = text.replace("..", ":").split(":")
    try:
        lo, hi = (int(p) for p in parts) if len(parts) == 2 else (0, 0)
    except ValueError:
        lo, hi = 0, 0
    if not 1 <= lo < hi:
        raise PlanError(f"--sequence-id-range: expected LO:HI with 1 <= LO < HI, got {text!r}")
    return [lo, hi]


def _file_section(plan_file: Path | None, key: str) -> object:
    """The plan file's own `key` section (None without a plan file)."""
    if plan_file is None:
        return None
    return load_plan_yaml(read_text_file(plan_file, "plan file")).get(key)


def _file_mapping(plan_file: Path | None, key: str) -> dict[str, Any]:
    """The plan file's `key` section as a mapping the options then override."""
    raw = _file_section(plan_file, key)
    return dict(raw) if isinstance(raw, dict) else {}


def json_service_options(
    plan_file: Path | None, overrides: dict[str, Any], given: dict[str, Any]
) -> None:
    """--json-* and --expect-* options onto the plan file's json_service (options win).
    A template given as @FILE is read here; a bodies file is read by preflight."""
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return
    template = given.get("template")
    if isinstance(template, str) and template.startswith("@"):
        given["template"] = read_text_file(Path(template[1:]), "--json-template")
    base = _file_mapping(plan_file, "json_service")
    if "template" in given:
        base.pop("bodies", None)
        base.pop("bodies_file", None)
    if "bodies_file" in given:
        base.pop("template", None)
        base.pop("bodies", None)
        given["bodies_file"] = str(Path(given["bodies_file"]).resolve())
    overrides["json_service"] = {**base, **given}


def target_options(
    plan_file: Path | None,
    overrides: dict[str, Any],
    tls: bool,
    tls_fields: dict[str, str | None],
    header_files: list[str],
    header_envs: list[str],
) -> None:
    """TLS and header options into plan overrides (the values of headers stay out of it)."""
    from volley.target import parse_header_file, read_file_bytes

    given = {k: v for k, v in tls_fields.items() if v is not None}
    if tls or given:
        overrides["tls"] = {**_file_mapping(plan_file, "tls"), "enabled": True, **given}
    headers: list[dict[str, str]] = []
    for path in header_files:
        text = read_file_bytes(path, "--header-file").decode("utf-8", "replace")
        headers += [
            {"name": h.name, "file": str(Path(path).resolve())}
            for h in parse_header_file(text, path)
        ]
    for item in header_envs:
        name, sep, env = item.partition("=")
        if not sep or not name or not env:
            raise PlanError(f"--header-env: expected NAME=ENVVAR, got {shown(item)}")
        headers.append({"name": name, "env": env})
    if headers:
        raw_h = _file_section(plan_file, "headers")
        overrides["headers"] = [*(raw_h if isinstance(raw_h, list) else []), *headers]
