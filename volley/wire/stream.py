"""Decoupled (streaming) models on the wire: one request, a stream of responses.

gRPC: Triton's `ModelStreamInfer` carries many requests on one stream; a decoupled model
answers each with any number of responses matched by the request `id`. The request asks
for `triton_enable_empty_final_response`, so every request ends with a response whose
`triton_final_response` parameter is true (an empty one when the model's last response
carried no data), and an error response ends its request too.

HTTP: Triton's generate extension, `POST /v2/models/<m>/generate_stream` with a JSON
object of inputs, answers with server-sent events (`data: {json}\\n\\n`), one per
response; an event with an `error` key is an error, and the end of the body ends it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
from tritonclient.grpc import service_pb2

from volley.dist import parse_dist
from volley.inputs import DTYPES

#: ModelInferRequest field 4 (parameters) entry asking for the flag-only final response;
#: appended to a serialized request (a repeated/map field may come in any order).
EMPTY_FINAL_PARAM: bytes = service_pb2.ModelInferRequest(
    parameters={"triton_enable_empty_final_response": service_pb2.InferParameter(bool_param=True)}
).SerializeToString()
FINAL_KEY = "triton_final_response"


Param = tuple[str, bool | int | float | str]


def _param(value: bool | int | float | str) -> service_pb2.InferParameter:
    if isinstance(value, bool):
        return service_pb2.InferParameter(bool_param=value)
    if isinstance(value, int):
        return service_pb2.InferParameter(int64_param=value)
    if isinstance(value, float):
        return service_pb2.InferParameter(double_param=value)
    return service_pb2.InferParameter(string_param=value)


def request_params(params: tuple[Param, ...]) -> bytes:
    """The plan's request parameters as ModelInferRequest field-4 entries (appended to a
    serialized request, like EMPTY_FINAL_PARAM), plus the final-response ask."""
    extra: bytes = service_pb2.ModelInferRequest(
        parameters={k: _param(v) for k, v in params}
    ).SerializeToString()
    return EMPTY_FINAL_PARAM + extra


def drawn_values(
    drawn: tuple[tuple[str, str], ...], n: int, seed: int, model_id: int = 0
) -> list[tuple[Param, ...]]:
    """Per payload of a pool of `n`, the value of each drawn request parameter: integers
    from each distribution, stratified (each of the n draws from its own 1/n of the CDF,
    in a seeded shuffled order), so every worker of every agent draws the same ones."""
    if not drawn or n <= 0:
        return [()] * max(n, 0)
    rng = np.random.default_rng([seed, 0x70CE, model_id])
    cols: list[list[int]] = []
    for _name, text in drawn:
        d = parse_dist(text)
        u = (rng.permutation(n) + rng.random(n)) / n
        cols.append([round(d.quantile(float(x))) for x in u])
    return [
        tuple((name, col[k]) for (name, _), col in zip(drawn, cols, strict=True)) for k in range(n)
    ]


def param_entries(params: tuple[Param, ...]) -> bytes:
    """Request parameters as ModelInferRequest field-4 entries (to append to a request)."""
    if not params:
        return b""
    out: bytes = service_pb2.ModelInferRequest(
        parameters={k: _param(v) for k, v in params}
    ).SerializeToString()
    return out


def stream_request(msg: bytes, rid: int, params: bytes = EMPTY_FINAL_PARAM) -> bytes:
    """A serialized ModelInferRequest with its id (field 3) and `params` (the
    final-response ask, and the plan's parameters: `request_params`)."""
    idb = b"%d" % rid
    return msg + params + b"\x1a" + bytes((len(idb),)) + idb


@dataclass(slots=True)
class StreamResponse:
    """One ModelStreamInferResponse, as much as the records need."""

    rid: int  #: the request id (0: none or not a number)
    error: str  #: the server's error message ("" when none)
    final: bool  #: the request's last response
    data: bool  #: carries outputs (a token), not only the final flag
    tokens: int  #: tokens it carries (the token output's element count, else 1 with data)
    outputs: int  #: outputs it carries


def _elements(shape: object) -> int:
    n = 1
    for d in shape:  # type: ignore[attr-defined]
        n *= max(int(d), 0)
    return n


def parse_stream_response(msg: bytes, token_output: str = "") -> StreamResponse | None:
    """Decode one response message (None when it is not a ModelStreamInferResponse)."""
    try:
        r = service_pb2.ModelStreamInferResponse.FromString(msg)
    except Exception:
        return None
    ir = r.infer_response
    try:
        rid = int(ir.id) if ir.id else 0
    except ValueError:
        rid = 0
    if r.error_message:
        return StreamResponse(rid, r.error_message, True, False, 0, 0)
    params = ir.parameters
    final = FINAL_KEY in params and params[FINAL_KEY].bool_param
    outs = ir.outputs
    data = len(outs) > 0
    tokens = 1 if data else 0
    if data and token_output:
        tokens = 0
        for o in outs:
            if o.name == token_output:
                tokens = _elements(o.shape)
                break
    return StreamResponse(rid, "", final, data, tokens, len(outs))


# ---- HTTP: the generate extension ------------------------------------------------------
def generate_body(msg: bytes, params: tuple[Param, ...] = ()) -> bytes:
    """The JSON object of a generate request from a serialized ModelInferRequest: each
    input by name, a scalar for one element, else a flat list (BYTES as text), and the
    plan's request parameters under "parameters"."""
    req = service_pb2.ModelInferRequest.FromString(msg)
    if len(req.raw_input_contents) != len(req.inputs):
        raise ValueError("generate: every input needs its raw contents")
    doc: dict[str, object] = {}
    for t, raw in zip(req.inputs, req.raw_input_contents, strict=True):
        if t.datatype == "BYTES":
            items, pos = [], 0
            while pos + 4 <= len(raw):
                (n,) = struct.unpack_from("<I", raw, pos)
                items.append(raw[pos + 4 : pos + 4 + n].decode("utf-8", "replace"))
                pos += 4 + n
            values: list[object] = list(items)
        else:
            values = np.frombuffer(raw, dtype=DTYPES[t.datatype]).tolist()
        doc[t.name] = values[0] if len(values) == 1 else values
    if params:
        doc["parameters"] = dict(params)
    return json.dumps(doc, separators=(",", ":")).encode()


def generate_path(model: str, version: str) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    if version:
        path += f"/versions/{quote(version, safe='')}"
    return path + "/generate_stream"


#: Keys of a generate response that are not outputs.
_META = frozenset(("model_name", "model_version", "id", "parameters"))


def parse_sse_event(event: bytes, token_output: str = "") -> StreamResponse | None:
    """One server-sent event of generate_stream (its `data:` lines joined); None when it
    is not a JSON object. An `error` key is an error response that ends the request."""
    data = b"\n".join(
        line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    )
    if not data:
        return StreamResponse(0, "", False, False, 0, 0)  # a comment or keep-alive
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    if "error" in doc:
        return StreamResponse(0, str(doc["error"]) or "error", True, False, 0, 0)
    outputs = [k for k in doc if k not in _META]
    tokens = 1 if outputs else 0
    if outputs and token_output:
        v = doc.get(token_output)
        tokens = len(v) if isinstance(v, list) else (1 if v is not None else 0)
    return StreamResponse(0, "", False, bool(outputs), tokens, len(outputs))


class SseReader:
    """Incremental reader of a chunked `text/event-stream` body: feed it bytes as they
    come, get each complete event's bytes; `done` once the last chunk came; `bad` on a
    malformed chunk framing."""

    __slots__ = ("bad", "buf", "done", "events", "need", "skip")

    def __init__(self) -> None:
        self.buf = b""  #: chunked framing not yet read
        self.need = 0  #: data bytes left in the current chunk
        self.skip = 0  #: CRLF bytes after a chunk's data still to pass
        self.events = b""  #: event text not yet ended by a blank line
        self.done = False
        self.bad = False

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        body: list[bytes] = []
        while pos < n and not self.done:
            if self.need:
                take = min(self.need, n - pos)
                body.append(buf[pos : pos + take])
                pos += take
                self.need -= take
                continue
            if self.skip:
                take = min(self.skip, n - pos)
                pos += take
                self.skip -= take
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > 1024:
                    self.bad = True
                    return []
                break
            try:
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
            except ValueError:
                self.bad = True
                return []
            pos = eol + 2
            if size == 0:
                self.done = True  # trailers, if any, are not read
                break
            self.need, self.skip = size, 2
        self.buf = buf[pos:] if pos < n and not self.done else b""
        text = self.events + b"".join(body) if body else self.events
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n")
        out = text.split(b"\n\n")
        self.events = out.pop()
        return [e for e in out if e]
