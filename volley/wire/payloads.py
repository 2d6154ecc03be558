"""Every distinct request of a worker, built once and framed for the plan's protocol.

`build_payloads(plan)` draws each model's request pool (volley.request) and frames every
payload for the wire: a gRPC message (5-byte prefix, optional compression) or an HTTP/1.1
KServe v2 request (head without Content-Length per body; the body in Triton's binary
tensor extension, or in plain KServe v2 JSON with `http_body: json`).
`Payloads.pick` maps an arrival index of the global schedule to its payload.
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from volley.mix import ModelMix
from volley.plan import Plan, PlanError, plan_models
from volley.request import RequestPool, build_plan_pool, http_infer_body
from volley.wire.grpc import USER_AGENT, grpc_frame
from volley.wire.kserve_json import json_infer_body
from volley.wire.stream import drawn_values, generate_body, generate_path, param_entries


@dataclass(frozen=True)
class Wire:
    """One distinct request, ready for the wire, and what the records say about it."""

    msg: bytes  #: serialized ModelInferRequest
    body: bytes  #: what goes on the wire: gRPC-framed message or HTTP request body
    req_bytes: int
    shape_id: int
    batch_size: int
    model_id: int
    expected_outputs: int
    #: HTTP: the request head (request line and headers) for this body
    head: bytes = b""


@dataclass
class Payloads:
    """Every distinct request of a worker, grouped by model."""

    wires: list[Wire]
    shapes: list[str]
    #: model id -> (first index in wires, count)
    ranges: list[tuple[int, int]]
    mix: ModelMix
    #: model id -> its pool: picks a payload, weighted, from the seed and the index
    pools: list[RequestPool]

    def pick(self, index: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Payload index for each arrival index of the global schedule: the model from the
        mix, then the payload from that model's pool (both depend only on the seed and
        the index, so a request carries the same payload however the schedule is split)."""
        if len(self.ranges) == 1:
            first: np.ndarray[Any, Any] = self.ranges[0][0] + self.pools[0].pick_many(index)
            return first
        model = self.mix.pick(index)
        out = np.empty(len(index), np.int64)
        for m, (start, _count) in enumerate(self.ranges):
            mask = model == m
            if mask.any():
                out[mask] = start + self.pools[m].pick_many(index[mask])
        return out

    def pick_one(self, index: int) -> int:
        return int(self.pick(np.asarray([index], np.int64))[0])


def _widen(pool: RequestPool) -> RequestPool:
    """A pool of the configured size from a smaller one (repeats, same weights in all), so
    parameters drawn per payload (plan.stream.drawn) get as many draws as configured."""
    n = len(pool.payloads)
    k = -(-pool.requested // n) if n else 1
    if k <= 1:
        return pool
    return dataclasses.replace(
        pool,
        payloads=pool.payloads * k,
        weights=[w / k for w in pool.weights] * k,
        draws=pool.draws * k,
    )


def build_payloads(plan: Plan, seed: int = 0, headers: Sequence[tuple[str, str]] = ()) -> Payloads:
    """Build and serialize every model's request pool once, framed for the plan's protocol.

    Pools come from the plan alone (the plan's seed; `seed` is ignored and kept for
    callers), so every worker of every agent builds the same ones. HTTP request heads
    carry `headers` (volley.target.TargetAccess.headers: values, never read here)."""
    del seed
    if plan.protocol == "json":
        return _json_payloads(plan, headers)
    wires: list[Wire] = []
    shapes: list[str] = []
    ranges: list[tuple[int, int]] = []
    pools: list[RequestPool] = []
    models = plan_models(plan)
    for model_id, m in enumerate(models):
        one = dataclasses.replace(
            plan,
            model=m.name,
            model_version=m.version,
            inputs=m.inputs,
            outputs=m.outputs,
            max_batch_size=m.max_batch_size,
            models=(),
        )
        pool = build_plan_pool(one)
        if plan.stream.drawn and plan.stream.decoupled:
            pool = _widen(pool)
        pools.append(pool)
        offset = len(shapes)
        shapes.extend(pool.shapes)
        first = len(wires)
        drawn = drawn_values(
            plan.stream.drawn if plan.stream.decoupled else (),
            len(pool.payloads),
            plan.seed,
            model_id,
        )
        for p, own in zip(pool.payloads, drawn, strict=True):
            if own and plan.protocol != "http":
                # this payload's drawn parameters (max_tokens...) travel in its message
                p = dataclasses.replace(p, body=p.body + param_entries(own))
            if plan.protocol == "http" and plan.stream.decoupled:
                # the generate extension: a JSON object of inputs, answered as events
                try:
                    gen = generate_body(p.body, (*plan.stream.parameters, *own))
                except ValueError as exc:
                    raise PlanError(f"model {m.name}: {exc}") from None
                head = _generate_head(plan, m.name, m.version, headers)
                head += b"Content-Length: %d\r\n\r\n" % len(gen)
                wires.append(
                    Wire(
                        p.body,
                        gen,
                        len(gen),
                        offset + p.shape_id,
                        p.batch_size,
                        model_id,
                        len(m.outputs),
                        head,
                    )
                )
            elif plan.protocol == "http":
                if plan.http_body == "json":
                    body, json_len = json_infer_body(p.body), -1
                else:
                    body, json_len = http_infer_body(p.body)
                wire_body = _http_encode(body, plan.compression)
                head = _http_head(plan, m.name, m.version, json_len, headers)
                head += b"Content-Length: %d\r\n\r\n" % len(wire_body)
                wires.append(
                    Wire(
                        p.body,
                        wire_body,
                        len(body),
                        offset + p.shape_id,
                        p.batch_size,
                        model_id,
                        len(m.outputs),
                        head,
                    )
                )
            else:
                framed = grpc_frame(p.body, plan.compression)
                wires.append(
                    Wire(
                        p.body,
                        framed,
                        p.req_bytes,
                        offset + p.shape_id,
                        p.batch_size,
                        model_id,
                        len(m.outputs),
                    )
                )
        ranges.append((first, len(wires) - first))
    mix = ModelMix([m.weight for m in models], plan.seed)
    return Payloads(wires, shapes, ranges, mix, pools)


def _json_payloads(plan: Plan, headers: Sequence[tuple[str, str]]) -> Payloads:
    """protocol json: one pool of JSON bodies, POSTed to the service's path."""
    from volley.wire.json_service import json_head, json_pool

    pool = json_pool(plan)
    head = json_head(plan, headers)
    wires = [
        Wire(
            p.body,
            p.body,
            len(p.body),
            p.shape_id,
            p.batch_size,
            0,
            0,
            head + b"Content-Length: %d\r\n\r\n" % len(p.body),
        )
        for p in pool.payloads
    ]
    return Payloads(wires, pool.shapes, [(0, len(wires))], ModelMix([1.0], plan.seed), [pool])


def _http_encode(body: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(body, compresslevel=6, mtime=0)
    if compression == "deflate":
        return zlib.compress(body, 6)
    return body


def _generate_head(
    plan: Plan, model: str, version: str, headers: Sequence[tuple[str, str]]
) -> bytes:
    """generate_stream's request line and headers, without Content-Length."""
    lines = [
        f"POST {generate_path(model, version)} HTTP/1.1",
        f"Host: {plan.target}",
        f"User-Agent: {USER_AGENT}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def _http_head(
    plan: Plan, model: str, version: str, json_len: int, headers: Sequence[tuple[str, str]]
) -> bytes:
    """Request line and headers without Content-Length (added per body)."""
    from urllib.parse import quote

    path = f"/v2/models/{quote(model, safe='')}"
    if version:
        path += f"/versions/{quote(version, safe='')}"
    path += "/infer"
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {plan.target}",
        f"User-Agent: {USER_AGENT}",
    ]
    if json_len < 0:  # plain JSON
        lines.append("Content-Type: application/json")
    else:
        lines.append("Content-Type: application/octet-stream")
        lines.append(f"Inference-Header-Content-Length: {json_len}")
    if plan.compression != "none":
        lines.append(f"Content-Encoding: {plan.compression}")
        lines.append(f"Accept-Encoding: {plan.compression}")
    for name, value in headers:
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")
