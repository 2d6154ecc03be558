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

from dataclasses import dataclass

from tritonclient.grpc import service_pb2

#: ModelInferRequest field 4 (parameters) entry asking for the flag-only final response;
#: appended to a serialized request (a repeated/map field may come in any order).
EMPTY_FINAL_PARAM: bytes = service_pb2.ModelInferRequest(
    parameters={"triton_enable_empty_final_response": service_pb2.InferParameter(bool_param=True)}
).SerializeToString()
FINAL_KEY = "triton_final_response"


def stream_request(msg: bytes, rid: int) -> bytes:
    """A serialized ModelInferRequest with its id (field 3) and the final-response ask."""
    idb = b"%d" % rid
    return msg + EMPTY_FINAL_PARAM + b"\x1a" + bytes((len(idb),)) + idb


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
